"""FSDP2 wrapping of the student, the EMA teacher and the Gram teacher (`parallelize_meta_arch`)."""

from dinov3_us.fsdp.parallelize import compile_problem, local_shard, needs_fsdp, parallelize_meta_arch, reshard_module

__all__ = ["compile_problem", "local_shard", "needs_fsdp", "parallelize_meta_arch", "reshard_module"]
