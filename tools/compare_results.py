r"""Compare evaluation runs: a markdown table (headline metrics with 95% CIs, per-class F1) and a bar chart.

    python tools/compare_results.py runs/random/results.json runs/official/results.json runs/ours/results.json \
        [--output-dir OUT]

Installed as `dinov3us-compare`; what it writes: `--help` (dinov3_us/launch/cli_compare.py).
"""

import sys

from dinov3_us.launch.cli_compare import main

if __name__ == "__main__":
    sys.exit(main())
