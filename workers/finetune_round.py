"""Entry point of one rank of a distributed fine-tune round (what torchrun starts):
`python -m workers.finetune_round --spec SPEC [--backend auto] [--device-kind cpu]`.

Same as `adrec-stream finetune-round`; see :mod:`adrec_stream.incremental.distributed`.
"""

from __future__ import annotations

import sys

from adrec_stream.cli import main

if __name__ == "__main__":
    sys.exit(main(["finetune-round", *sys.argv[1:]]))
