"""Process helpers shared by the broker manager and the RocksDB store's lock reporting."""

from __future__ import annotations

import os


def pid_alive(pid: int) -> bool:
    """True when process ``pid`` exists and is not a zombie (``kill(pid, 0)``, then ``/proc/<pid>/stat``).

    A process owned by another user counts as alive; without ``/proc`` the ``kill`` answer is trusted.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child still answers kill(0); look at /proc when available
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][:1] != "Z"
    except OSError:
        return True
