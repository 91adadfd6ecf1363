r"""Linear probe on frozen features (DINOv2/v3 protocol), best head on val, reported on test.

    python tools/eval_linear.py --pretrained-weights W --train-dataset D:train --val-dataset D:val \
        --test-datasets D:test --output-dir OUT [--config-file configs/eval/X.yaml] [--cache-dir C] [key=value ...]
    torchrun --nproc_per_node 2 tools/eval_linear.py ...        # feature extraction split over the processes

Installed as `dinov3us-eval-linear`; the options: `--help` (dinov3_us/launch/cli_eval.py).
"""

import sys

from dinov3_us.launch.cli_eval import linear as main

if __name__ == "__main__":
    sys.exit(main())
