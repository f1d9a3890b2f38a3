"""Entry point of the ingest worker: `python -m workers.ingest [--config configs/stream.yaml] [--set KEY=VALUE ...]`.

Same as `adrec-stream worker ingest`; see :mod:`adrec_stream.stream.worker_cli`.
"""

from __future__ import annotations

import sys

from adrec_stream.cli import main

if __name__ == "__main__":
    sys.exit(main(["worker", "ingest", *sys.argv[1:]]))
