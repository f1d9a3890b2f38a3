"""Entry point of the score worker: `python -m workers.score [--config configs/stream.yaml] [--set KEY=VALUE ...]`.

Same as `adrec-stream worker score`; see :mod:`adrec_stream.stream.worker_cli`.
"""

from __future__ import annotations

import sys

from adrec_stream.cli import main

if __name__ == "__main__":
    sys.exit(main(["worker", "score", *sys.argv[1:]]))
