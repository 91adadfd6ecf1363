"""The evaluation commands (`tools/eval_<task>.py`, console scripts `dinov3us-eval-<task>`): one function each.

Each runs `dinov3_us.eval.cli.main` for its task, with the task's description below as its `--help` text.
"""

from __future__ import annotations

from dinov3_us.eval.cli import main

LINEAR = """Linear probe on frozen features (DINOv2/v3 protocol), best head on val, reported on test.

    python tools/eval_linear.py --pretrained-weights W --train-dataset D:train --val-dataset D:val \\
        --test-datasets D:test --output-dir OUT [--config-file configs/eval/X.yaml] [--cache-dir C] [key=value ...]
    torchrun --nproc_per_node 2 tools/eval_linear.py ...        # feature extraction split over the processes

W is `random` (with --arch), an official DINOv3 .pth or an exported teacher. Features are computed once
per split; the grid of heads (linear.learning_rates x n_last_blocks x avgpool x losses) trains together
on them. Writes OUT/results.json, summary.md, confusion_matrix.png, config.yaml, log.txt
(+ label_efficiency.png with linear.label_fractions). Exit code 2 on a user error.
"""

KNN = """Weighted kNN on frozen features (k in knn.ks clipped to the train size, temperature 0.07, cosine).

    python tools/eval_knn.py --pretrained-weights W --train-dataset D:train [--val-dataset D:val] \\
        --test-datasets D:test --output-dir OUT [--config-file C.yaml] [--cache-dir C] [key=value ...]
    torchrun --nproc_per_node 2 tools/eval_knn.py ...

With a val split, k is chosen on it; else knn.default_k (20). Writes OUT/results.json, summary.md,
confusion_matrix.png, config.yaml, log.txt. Exit code 2 on a user error.
"""

FINETUNE = """Full fine-tuning with layer-wise lr decay, class weighting and early stopping on val.

    python tools/eval_finetune.py --pretrained-weights W --train-dataset D:train --val-dataset D:val \\
        --test-datasets D:test --output-dir OUT [--config-file C.yaml] [finetune.epochs=30 ...]
    torchrun --nproc_per_node 2 tools/eval_finetune.py ...     # DistributedDataParallel

Writes OUT/results.json, summary.md, confusion_matrix.png, config.yaml, log.txt. Exit code 2 on a
user error.
"""

SEGMENTATION = """Dense linear probe on frozen patch tokens for binary masks (HC18 heads): Dice and IoU.

    python tools/build_dataset.py --source hc18 --root ../shared/data/hc18 --out data/hc18
    python tools/eval_segmentation.py --pretrained-weights W --train-dataset data/hc18:train \\
        --val-dataset data/hc18:val --test-datasets data/hc18:test --output-dir OUT [--cache-dir C]

Per-patch logits are upsampled to the mask resolution (data.image_size); the best learning rate is
chosen on val Dice. Writes OUT/results.json, summary.md, examples.png, config.yaml, log.txt. Exit
code 2 on a user error.
"""


def linear(argv: list[str] | None = None) -> int:
    """`tools/eval_linear.py`: the linear probe; the exit code."""
    return main("linear", argv, description=LINEAR)


def knn(argv: list[str] | None = None) -> int:
    """`tools/eval_knn.py`: the kNN evaluation; the exit code."""
    return main("knn", argv, description=KNN)


def finetune(argv: list[str] | None = None) -> int:
    """`tools/eval_finetune.py`: full fine-tuning; the exit code."""
    return main("finetune", argv, description=FINETUNE)


def segmentation(argv: list[str] | None = None) -> int:
    """`tools/eval_segmentation.py`: the dense linear probe on masks; the exit code."""
    return main("segmentation", argv, description=SEGMENTATION)
