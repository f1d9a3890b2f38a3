"""JSON log lines stay strict JSON: non-finite floats (a diverged fine-tune round's loss) are written as null."""

from __future__ import annotations

import json
import subprocess
import sys


def _strict(line: str) -> dict:
    def refuse(name: str) -> None:
        raise ValueError(f"non-JSON constant {name} in a log line")

    return json.loads(line, parse_constant=refuse)


def test_nan_and_infinity_are_logged_as_null_nested_too():
    code = ("from adrec_stream.logging import get_logger\n"
            "get_logger('t').info('finetune_round', loss_after=float('nan'), loss_before=1.5,"
            " stats={'max': float('inf'), 'xs': [float('-inf'), 2.0]})\n")
    err = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stderr
    (line,) = [ln for ln in err.splitlines() if ln.startswith("{")]
    ev = _strict(line)
    assert ev["event"] == "finetune_round" and ev["loss_after"] is None and ev["loss_before"] == 1.5
    assert ev["stats"] == {"max": None, "xs": [None, 2.0]}


def test_library_records_are_json_lines_and_repeats_are_written_once():
    """aiokafka-style records (a retry loop while the broker is down) come out as strict JSON with logger and
    level; 50 repeats of one message give one line (a fresh user counted 468 plain-text lines in one outage)."""
    code = ("import logging\n"
            "from adrec_stream.logging import configure_logging, get_logger\n"
            "configure_logging()\n"
            "for _ in range(50):\n"
            "    logging.getLogger('aiokafka').error('Unable connect to node with id %s: %s', 111, 'refused')\n"
            "logging.getLogger('kafka.cluster').warning('No node available for metadata refresh')\n"
            "logging.getLogger('aiokafka').info('not shown below WARNING')\n"
            "get_logger('t').info('worker_stats', received=3)\n")
    err = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stderr
    lines = [_strict(ln) for ln in err.splitlines()]
    assert [(e.get("logger"), e["level"], e["event"]) for e in lines] == [
        ("aiokafka", "error", "Unable connect to node with id 111: refused"),
        ("kafka.cluster", "warning", "No node available for metadata refresh"),
        (None, "info", "worker_stats")]


def test_repeat_filter_counts_what_it_left_out():
    import logging

    from adrec_stream.logging import RepeatFilter

    now = [0.0]
    f = RepeatFilter(window_s=30.0, clock=lambda: now[0])

    def rec(msg: str) -> logging.LogRecord:
        return logging.LogRecord("aiokafka", logging.ERROR, __file__, 1, msg, (111,), None)

    assert f.filter(rec("Unable connect to node with id %s"))
    assert [f.filter(rec("Unable connect to node with id %s")) for _ in range(9)] == [False] * 9
    assert f.filter(rec("Failed fetch messages from %s"))  # another template: its own count
    now[0] = 31.0
    r = rec("Unable connect to node with id %s")
    assert f.filter(r) and r.repeated == 9
    now[0] = 62.0
    r = rec("Unable connect to node with id %s")
    assert f.filter(r) and not hasattr(r, "repeated")  # nothing left out in the last window
