"""Full fine-tuning with layer-wise lr decay, class weighting and early stopping on val.

    python tools/eval_finetune.py --pretrained-weights W --train-dataset D:train --val-dataset D:val \
        --test-datasets D:test --output-dir OUT [--config-file C.yaml] [finetune.epochs=30 ...]
    torchrun --nproc_per_node 2 tools/eval_finetune.py ...     # DistributedDataParallel

Writes OUT/results.json, summary.md, confusion_matrix.png, config.yaml, log.txt. Exit code 2 on a
user error.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dinov3_us.eval.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main("finetune", description=__doc__))
