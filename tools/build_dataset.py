"""Curate a public fetal-ultrasound dataset into webdataset shards, or merge curated folders into a pool.

    python tools/build_dataset.py --source fpdb --task brain-planes --root ../shared/data/fpdb --out data/fpdb_brain
    python tools/build_dataset.py --source hc18 --root ../shared/data/hc18 --out data/hc18
    python tools/build_dataset.py --source phantom --out data/phantom            # synthetic demo data
    python tools/build_dataset.py --merge data/hc18 data/fpdb --out data/pool

Installed as `dinov3us-build-dataset`; the options: `--help` (dinov3_us/launch/cli_build_dataset.py).
"""

import sys

from dinov3_us.launch.cli_build_dataset import main

if __name__ == "__main__":
    sys.exit(main())
