r"""Full fine-tuning with layer-wise lr decay, class weighting and early stopping on val.

    python tools/eval_finetune.py --pretrained-weights W --train-dataset D:train --val-dataset D:val \
        --test-datasets D:test --output-dir OUT [--config-file C.yaml] [finetune.epochs=30 ...]
    torchrun --nproc_per_node 2 tools/eval_finetune.py ...     # DistributedDataParallel

Installed as `dinov3us-eval-finetune`; the options: `--help` (dinov3_us/launch/cli_eval.py).
"""

import sys

from dinov3_us.launch.cli_eval import finetune as main

if __name__ == "__main__":
    sys.exit(main())
