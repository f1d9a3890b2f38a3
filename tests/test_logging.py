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
