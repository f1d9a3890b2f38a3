"""Process helpers shared by the broker manager, the local worker pipeline and the RocksDB store's lock reporting."""

from __future__ import annotations

import os
import signal


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


def die_with_parent() -> None:
    """``preexec_fn`` for children owned by this process: on Linux the kernel sends them SIGTERM when the
    parent dies (``prctl(PR_SET_PDEATHSIG)``), so a killed test session or demo leaves no broker/worker behind.
    No-op elsewhere."""
    try:
        import ctypes  # noqa: PLC0415

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
