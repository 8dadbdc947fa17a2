"""The process's file-descriptor limit, raised and shared out without the server's imports."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from ingest.daemon.limits import RESERVE, connection_cap

PROGRAM = textwrap.dedent(
    """
    import json, resource, sys
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, 4096))
    import ingest.worker  # what `ingest run` imports
    from ingest.daemon.limits import open_files_limit
    soft = open_files_limit()
    server = ("uvicorn", "h11", "ingest.daemon.connections")
    print(json.dumps({
        "soft": soft,
        "in_force": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
        "server_imports": sorted(m for m in server if m in sys.modules),
    }))
    """
)


def test_the_soft_limit_is_raised_to_the_hard_one_without_importing_the_server() -> None:
    done = subprocess.run([sys.executable, "-c", PROGRAM], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    seen = json.loads(done.stdout)
    assert seen["soft"] == seen["in_force"] == 4096
    # a --once run without a server never pays for uvicorn's import (about 30 ms of CPU)
    assert seen["server_imports"] == []


def test_the_connection_cap_leaves_descriptors_for_everything_else() -> None:
    assert connection_cap(500, 256) == 500  # configured: as configured
    assert connection_cap(0, 1024) == 768  # three quarters
    assert connection_cap(0, 200) == 200 - RESERVE  # at least RESERVE left over
    assert connection_cap(0, 40) == 16  # never below 16
