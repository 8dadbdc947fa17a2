"""Write a few sample event files (JSON lines, gzipped JSON lines, CSV) into a directory, for the demo."""

from __future__ import annotations

import gzip
import json
import random
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path


def main(target: Path, files: int = 6, per_file: int = 5000) -> None:
    rng = random.Random(7)
    now = datetime.now(UTC)
    target.mkdir(parents=True, exist_ok=True)
    for f in range(files):
        rows = [
            {
                "id": f * per_file + i,
                "ts": (now - timedelta(seconds=rng.randrange(86400))).isoformat(),
                "user": f"user-{rng.randrange(1000)}",
                "event": rng.choice(["view", "click", "purchase"]),
                "amount": round(rng.random() * 100, 2),
            }
            for i in range(per_file)
        ]
        if f % 3 == 2:
            lines = ["id,ts,user,event,amount"] + [",".join(str(r[k]) for k in r) for r in rows]
            (target / f"events-{f}.csv").write_text("\n".join(lines) + "\n")
        else:
            data = "".join(json.dumps(r) + "\n" for r in rows).encode()
            name = f"events-{f}.jsonl" + (".gz" if f % 3 == 1 else "")
            (target / name).write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    print(f"wrote {files} sample files ({files * per_file} events) to {target}/")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "inbox"))
