"""FSDP2 wrapping of the student, the EMA teacher and the Gram teacher (`parallelize_meta_arch`)."""

from dinov3_us.fsdp.parallelize import parallelize_meta_arch, reshard_module

__all__ = ["parallelize_meta_arch", "reshard_module"]
