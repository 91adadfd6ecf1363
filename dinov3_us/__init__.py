"""dinov3_us: DINOv3 self-supervised pretraining and evaluation for fetal ultrasound.

Stages, in the order data flows: `data` (curation, streaming, augmentation) -> `models` / `layers` /
`loss` / `train` / `fsdp` (the objective and the distributed loop) -> `checkpointer` (sharded
checkpoints, export, conversion) -> `eval` (probes, fine-tuning, reports). `launchers/` chains them as
SLURM jobs. A later stage imports an earlier one, never the reverse.
"""

import os

# CPU tensors of 2 MiB and more on transparent huge pages: a fresh [patches, 65,536] float32 buffer then
# costs ~6 ms to fault in instead of ~60 ms (2 cores), which is most of the CPU time of the loss path.
# torch reads this once, at its first allocation: set before torch is imported (every entry point
# imports dinov3_us first). THP_MEM_ALLOC_ENABLE=0 in the environment turns it off.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

__version__ = "0.1.0"
