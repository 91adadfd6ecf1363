"""Dense linear probe on frozen patch tokens for binary masks (HC18 heads): Dice and IoU.

    python tools/build_dataset.py --source hc18 --root ../shared/data/hc18 --out data/hc18
    python tools/eval_segmentation.py --pretrained-weights W --train-dataset data/hc18:train \
        --val-dataset data/hc18:val --test-datasets data/hc18:test --output-dir OUT [--cache-dir C]

Per-patch logits are upsampled to the mask resolution (data.image_size); the best learning rate is
chosen on val Dice. Writes OUT/results.json, summary.md, examples.png, config.yaml, log.txt. Exit
code 2 on a user error.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dinov3_us.eval.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main("segmentation", description=__doc__))
