"""A load generator for the HTTP source, independent of the worker's code (standard library only).

    python scripts/benchmark/http_load.py URL TOKEN [--connections 16] [--requests 400] [--records 1000]
                                          [--rate R] [--first-id N]

Bodies (NDJSON, ~200-byte records with unique ids) are built before the clock starts. Each connection
is a keep-alive http.client connection in its own thread. With --rate, requests are sent on an open-loop
schedule (R requests/s in total, whatever the answers' latency), so latency is measured at that rate;
without it, as fast as the worker answers. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import threading
import time
from collections import Counter
from urllib.parse import urlparse


def event(i: int, rng: random.Random) -> str:
    """One ~280-byte event (the same shape as the other benchmarks' input), with a list and a struct
    as the events users send have."""
    return json.dumps(
        {
            "id": i,
            "ts": f"2024-08-02T{rng.randrange(24):02d}:{rng.randrange(60):02d}:00Z",
            "user": f"user-{rng.randrange(100_000)}",
            "event": rng.choice(["view", "click", "purchase", "signup"]),
            "amount": round(rng.random() * 500, 2),
            "ok": rng.random() < 0.9,
            "path": "/p/" + "".join(rng.choices("abcdefghij", k=40)),
            "tags": rng.sample(["new", "mobile", "promo", "beta", "eu", "returning"], k=rng.randrange(4)),
            "device": {"os": rng.choice(["ios", "android", "web"]), "version": rng.randrange(1, 20)},
        }
    )


def body(first_id: int, records: int, rng: random.Random) -> bytes:
    return ("\n".join(event(i, rng) for i in range(first_id, first_id + records)) + "\n").encode()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("token")
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--requests", type=int, default=400)
    ap.add_argument("--records", type=int, default=1000)
    ap.add_argument("--rate", type=float, default=0.0, help="requests/s in total (0: as fast as answered)")
    ap.add_argument("--first-id", type=int, default=0)
    ap.add_argument("--timeline", default="", help="write each request's start (s) and latency (ms) here")
    args = ap.parse_args()

    rng = random.Random(args.first_id)
    bodies = [body(args.first_id + n * args.records, args.records, rng) for n in range(args.requests)]
    url = urlparse(args.url)
    headers = {"Authorization": f"Bearer {args.token}", "Content-Type": "application/x-ndjson"}
    latencies: list[float] = []
    timeline: list[tuple[float, float]] = []
    statuses: Counter[int] = Counter()
    accepted = [0]
    lock = threading.Lock()
    next_request = [0]
    start = time.perf_counter() + 0.2  # every thread is ready before the first send

    def worker() -> None:
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
        while True:
            with lock:
                n = next_request[0]
                if n >= len(bodies):
                    break
                next_request[0] += 1
            due = start + n / args.rate if args.rate else start
            if (wait := due - time.perf_counter()) > 0:
                time.sleep(wait)
            sent = time.perf_counter()
            conn.request("POST", url.path, body=bodies[n], headers=headers)
            answer = conn.getresponse()
            data = answer.read()
            took = time.perf_counter() - (due if args.rate else sent)  # open loop: from when it was due
            with lock:
                latencies.append(took)
                timeline.append((round(sent - start, 4), round(took * 1000, 2)))
                statuses[answer.status] += 1
                if answer.status in (200, 202):
                    accepted[0] += json.loads(data)["accepted"]
        conn.close()

    threads = [threading.Thread(target=worker) for _ in range(args.connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - start
    latencies.sort()
    if args.timeline:
        with open(args.timeline, "w") as out:
            out.writelines(f"{t} {ms}\n" for t, ms in sorted(timeline))

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] if latencies else 0.0

    print(
        json.dumps(
            {
                "requests": len(bodies),
                "records": accepted[0],
                "seconds": round(seconds, 3),
                "records_per_s": round(accepted[0] / seconds),
                "rate": args.rate,
                "p50_ms": round(pct(0.50) * 1000, 1),
                "p99_ms": round(pct(0.99) * 1000, 1),
                "max_ms": round(latencies[-1] * 1000, 1) if latencies else 0.0,
                "statuses": dict(statuses),
                "mb_sent": round(sum(len(b) for b in bodies) / 1e6, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
