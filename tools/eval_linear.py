"""Linear probe on frozen features (DINOv2/v3 protocol), best head on val, reported on test.

    python tools/eval_linear.py --pretrained-weights W --train-dataset D:train --val-dataset D:val \
        --test-datasets D:test --output-dir OUT [--config-file configs/eval/X.yaml] [--cache-dir C] [key=value ...]
    torchrun --nproc_per_node 2 tools/eval_linear.py ...        # feature extraction split over the processes

W is `random` (with --arch), an official DINOv3 .pth or an exported teacher. Features are computed once
per split; the grid of heads (linear.learning_rates x n_last_blocks x avgpool x losses) trains together
on them. Writes OUT/results.json, summary.md, confusion_matrix.png, config.yaml, log.txt
(+ label_efficiency.png with linear.label_fractions). Exit code 2 on a user error.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dinov3_us.eval.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main("linear", description=__doc__))
