"""Pretrain (it writes OUT/teacher.pth) -> evaluate, as a chain of SLURM jobs (or locally), from one command.

    python launchers/submit_pretrain.py --nodes 4 --gpus-per-node 8 --config-file configs/train/vitb16_fetalus.yaml \
        --output-dir runs/vitb16 [--partition P --account A --qos Q --timeout MIN ...] [key=value ...]
    python launchers/submit_pretrain.py --cluster local --config-file configs/train/tiny_cpu.yaml \
        --output-dir runs/demo train.dataset_path=data/phantom:train

Installed as `dinov3us-pretrain`; the options and the jobs: `--help` (dinov3_us/launch/submit_pretrain.py).
"""

import sys

from dinov3_us.launch.submit_pretrain import main

if __name__ == "__main__":
    sys.exit(main())
