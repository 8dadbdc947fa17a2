"""Cloudflare Queues: an HTTP pull consumer source (source.py), its API calls (api.py), message bodies
(bodies.py) and the ledger that keeps redelivered messages from landing twice (ledger.py)."""
