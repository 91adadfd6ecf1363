"""Weighted kNN on frozen features (k in knn.ks clipped to the train size, temperature 0.07, cosine).

    python tools/eval_knn.py --pretrained-weights W --train-dataset D:train [--val-dataset D:val] \
        --test-datasets D:test --output-dir OUT [--config-file C.yaml] [--cache-dir C] [key=value ...]
    torchrun --nproc_per_node 2 tools/eval_knn.py ...

With a val split, k is chosen on it; else knn.default_k (20). Writes OUT/results.json, summary.md,
confusion_matrix.png, config.yaml, log.txt. Exit code 2 on a user error.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dinov3_us.eval.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main("knn", description=__doc__))
