r"""Dense linear probe on frozen patch tokens for binary masks (HC18 heads): Dice and IoU.

    python tools/build_dataset.py --source hc18 --root ../shared/data/hc18 --out data/hc18
    python tools/eval_segmentation.py --pretrained-weights W --train-dataset data/hc18:train \
        --val-dataset data/hc18:val --test-datasets data/hc18:test --output-dir OUT [--cache-dir C]

Installed as `dinov3us-eval-segmentation`; the options: `--help` (dinov3_us/launch/cli_eval.py).
"""

import sys

from dinov3_us.launch.cli_eval import segmentation as main

if __name__ == "__main__":
    sys.exit(main())
