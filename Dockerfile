# syntax=docker/dockerfile:1
# r2-ingest: the worker image. Build: `docker build -t r2-ingest .`
# Run: `docker run --read-only -v ingest-spool:/var/lib/ingest -e R2_ACCOUNT_ID=... r2-ingest`
# (the daemon; `r2-ingest run --once` for a cron run). The spool must be on a volume: it holds what is
# read but not yet in R2. The root filesystem can be read-only.

# Stage 1: wheels for the worker and every dependency (a compiler is only ever needed here).
FROM python:3.11-slim-bookworm AS wheels
WORKDIR /src
COPY pyproject.toml README.md ./
COPY ingest ./ingest
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

# Stage 2: the runtime, with no build tools and a non-root numeric user.
FROM python:3.11-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    INGEST_SPOOL_DIR=/var/lib/ingest/spool \
    INGEST_LISTEN=0.0.0.0:8080 \
    INGEST_LOG_FORMAT=json
RUN --mount=type=bind,from=wheels,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels /wheels/r2_ingest-*.whl \
    && useradd --uid 10001 --no-create-home --home-dir /var/lib/ingest --shell /usr/sbin/nologin ingest \
    && mkdir -p /var/lib/ingest/spool \
    && chown -R 10001:10001 /var/lib/ingest
WORKDIR /var/lib/ingest
VOLUME ["/var/lib/ingest"]
USER 10001:10001
EXPOSE 8080
ENTRYPOINT ["ingest"]
CMD ["run"]
