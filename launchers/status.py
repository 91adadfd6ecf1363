"""Where a launch stands: the jobs table from `OUT/jobs.json` (refreshed from SLURM), the report when done.

    python launchers/status.py runs/vitb16 [--wait] [--report]

Installed as `dinov3us-status`; the options and exit codes: `--help` (dinov3_us/launch/status.py).
"""

import sys

from dinov3_us.launch.status import main

if __name__ == "__main__":
    sys.exit(main())
