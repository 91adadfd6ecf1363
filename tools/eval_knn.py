r"""Weighted kNN on frozen features (k in knn.ks clipped to the train size, temperature 0.07, cosine).

    python tools/eval_knn.py --pretrained-weights W --train-dataset D:train [--val-dataset D:val] \
        --test-datasets D:test --output-dir OUT [--config-file C.yaml] [--cache-dir C] [key=value ...]
    torchrun --nproc_per_node 2 tools/eval_knn.py ...

Installed as `dinov3us-eval-knn`; the options: `--help` (dinov3_us/launch/cli_eval.py).
"""

import sys

from dinov3_us.launch.cli_eval import knn as main

if __name__ == "__main__":
    sys.exit(main())
