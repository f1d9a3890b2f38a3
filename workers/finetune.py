"""Entry point of the fine-tune worker: `python -m workers.finetune [--config configs/stream.yaml] [--device D]`.

Same as `adrec-stream worker finetune`; see :mod:`adrec_stream.incremental.worker`.
"""

from __future__ import annotations

import sys

from adrec_stream.cli import main

if __name__ == "__main__":
    sys.exit(main(["worker", "finetune", *sys.argv[1:]]))
