"""dinov3_us: DINOv3 self-supervised pretraining and evaluation for fetal ultrasound.

Stages, in the order data flows: `data` (curation, streaming, augmentation) -> `models` / `layers` /
`loss` / `train` / `fsdp` (the objective and the distributed loop) -> `checkpointer` (sharded
checkpoints, export, conversion) -> `eval` (probes, fine-tuning, reports). `launchers/` chains them as
SLURM jobs. A later stage imports an earlier one, never the reverse.
"""

__version__ = "0.1.0"
