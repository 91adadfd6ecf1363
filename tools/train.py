"""DINOv3 pretraining (resumes by itself from the run folder's latest checkpoint).

    torchrun --nproc_per_node G tools/train.py --config-file CFG --output-dir OUT [key=value ...]
    python tools/train.py --config-file configs/train/tiny_cpu.yaml --output-dir runs/tiny   # one process

Installed as `dinov3us-train`; the options, exit codes and resume rules: `--help` (dinov3_us/launch/cli_train.py).
"""

import sys

from dinov3_us.launch.cli_train import main

if __name__ == "__main__":
    sys.exit(main())
