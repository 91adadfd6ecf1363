"""The evaluation part alone: (convert ->) linear probe, kNN, ... on an existing checkpoint or teacher file.

    python launchers/submit_eval.py --weights runs/vitb16/teacher.pth --dataset data/fpdb_brain --output-dir runs/ev
    python launchers/submit_eval.py --weights runs/vitb16/ckpt/124999 \
        --eval-config configs/eval/fpdb_brain_planes.yaml --output-dir runs/vitb16 --gpus-per-node 8

Installed as `dinov3us-eval`; the options and the jobs: `--help` (dinov3_us/launch/submit_eval.py).
"""

import sys

from dinov3_us.launch.submit_eval import main

if __name__ == "__main__":
    sys.exit(main())
