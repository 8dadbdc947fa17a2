"""r2-ingest: batch records from sources into dated Parquet objects on Cloudflare R2."""

__version__ = "0.1.0"
