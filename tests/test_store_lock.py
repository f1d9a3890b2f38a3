"""SequenceStore process locking and crash (kill -9) recovery, with a real second process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from collections import defaultdict

import pytest

from adrec_stream.data.events import Interaction
from adrec_stream.errors import StoreLockedError
from adrec_stream.state.store import SequenceStore, SourceRecord, pid_file_for

N_RECORDS = 20_000
N_USERS = 37

# Child: opens the store, applies the records in batches of 100 (printing progress), then waits forever.
CHILD = textwrap.dedent(
    """
    import sys, time
    from adrec_stream.state.store import SequenceStore, SourceRecord
    from adrec_stream.data.events import Interaction
    path, n, users, stop = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    store = SequenceStore(path, window=30)
    print("open", flush=True)
    recs = [SourceRecord("clicks", i % 2, i // 2, Interaction(f"u{i % users}", str(i), float(i), ""))
            for i in range(n)]
    for start in range(0, stop, 100):
        store.apply(recs[start:start + 100])
        if start == 5000:
            print("progress", flush=True)
        if start >= 5000:
            time.sleep(0.005)  # keep writing for a while so that the kill lands mid-stream
    print("done", flush=True)
    time.sleep(600)
    """
)


def _records(n: int = N_RECORDS) -> list[SourceRecord]:
    return [SourceRecord("clicks", i % 2, i // 2, Interaction(f"u{i % N_USERS}", str(i), float(i), "")) for i in range(n)]


def _spawn(path, stop: int) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path), str(N_RECORDS), str(N_USERS), str(stop)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    assert line == "open", proc.stderr.read() if proc.stderr else line
    return proc


def _kill9(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def test_second_open_in_same_process_is_refused(tmp_path):
    path = tmp_path / "db"
    with SequenceStore(path, window=5):
        with pytest.raises(StoreLockedError) as info:
            SequenceStore(path, window=5)
        msg = str(info.value)
        assert str(path) in msg and f"PID {os.getpid()}" in msg and "this process" in msg
    with SequenceStore(path, window=5):  # released on close
        pass


def test_second_process_names_path_and_pid_and_kill9_does_not_block(tmp_path):
    path = tmp_path / "db"
    proc = _spawn(path, stop=0)
    try:
        owner = json.loads(pid_file_for(path).read_text())
        assert owner["pid"] == proc.pid
        with pytest.raises(StoreLockedError) as info:
            SequenceStore(path, window=30)
        msg = str(info.value)
        assert str(path) in msg and f"PID {proc.pid}" in msg and "running" in msg
    finally:
        _kill9(proc)
    # the stale pid file is still there, but the lock died with the process
    assert json.loads(pid_file_for(path).read_text())["pid"] == proc.pid
    with SequenceStore(path, window=30) as store:
        assert json.loads(pid_file_for(path).read_text())["pid"] == os.getpid()
        assert store.applied_offsets() == {}
    assert not pid_file_for(path).exists()  # removed on clean close


def test_kill9_mid_stream_then_replay_is_exactly_once(tmp_path):
    """A writer is SIGKILLed while applying; re-applying every record from offset 0 gives exact state."""
    path = tmp_path / "db"
    proc = _spawn(path, stop=N_RECORDS)
    try:
        assert proc.stdout.readline().strip() == "progress"  # at least 5,000 records applied
    finally:
        _kill9(proc)
    records = _records()
    with SequenceStore(path, window=30) as store:
        done = store.applied_offsets()
        assert done[("clicks", 0)] >= 2500 and done[("clicks", 1)] >= 2500
        n_done = sum(o + 1 for o in done.values())
        assert n_done < N_RECORDS  # killed mid-stream
        # at-least-once redelivery from the beginning (as if no Kafka offset had been committed)
        applied = []
        for start in range(0, len(records), 700):
            applied += store.apply(records[start : start + 700])
        assert len(applied) == N_RECORDS - n_done
        expected: dict[str, list[str]] = defaultdict(list)
        for r in records:
            expected[r.event.user_id].append(r.event.item_id)
        for user, items in expected.items():
            assert store.sequence(user) == items[-30:]
        assert store.applied_offsets() == {("clicks", 0): N_RECORDS // 2 - 1, ("clicks", 1): N_RECORDS // 2 - 1}
