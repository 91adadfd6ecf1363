"""Activation checkpointing, then torch.compile, then FSDP2 `fully_shard` (per block, then root).

The order is torchtitan's and DINOv3's: AC wraps each block, compile each (wrapped) block, and
`fully_shard` each block before the root, with a `MixedPrecisionPolicy` (bf16/fp16/fp32 parameters,
fp32 or bf16 gradient reduction) so that one code path serves any world size and device.

One exception (`needs_fsdp`): a single process with fp32 parameters and fp32 reduction has nothing
to shard and nothing to cast, and FSDP2 would only copy every parameter into its all-gather buffers
and every gradient out of its reduce-scatter buffers, each step: time that buys nothing.
Such a run keeps plain modules: the same arithmetic (tests/fsdp/test_parallelize.py), up to the
last bits where oneDNN picks another kernel for FSDP2's flat-buffer weights (other alignment). Its
DCP checkpoints load into any number of ranks and back (tests/checkpointer/test_checkpointer_dist.py).
"""

from __future__ import annotations

import logging
import os
import shutil
import warnings
from collections.abc import Mapping

import torch
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor
from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts

from dinov3_us.dtypes import DTYPES

logger = logging.getLogger("dinov3_us")
# The backbone returns slices of its normed tokens (x_norm_clstoken, ...); nothing modifies them in place.
warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")

# Selective AC: keep matmul and attention outputs, recompute the cheap element-wise ops.
_SAVE_OPS = {torch.ops.aten.mm.default, torch.ops.aten.addmm.default, torch.ops.aten.bmm.default,
             torch.ops.aten._scaled_dot_product_efficient_attention.default,
             torch.ops.aten._scaled_dot_product_flash_attention.default,
             torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default}


def _selective_policy(ctx, op, *args, **kwargs):
    return CheckpointPolicy.MUST_SAVE if op in _SAVE_OPS else CheckpointPolicy.PREFER_RECOMPUTE


def _apply_ac(blocks: nn.ModuleList, full: bool) -> None:
    for i, block in enumerate(blocks):
        if full:
            blocks[i] = checkpoint_wrapper(block, preserve_rng_state=True)
        else:
            blocks[i] = checkpoint_wrapper(
                block, context_fn=lambda: create_selective_checkpoint_contexts(_selective_policy),
                preserve_rng_state=True)


def _apply_compile(blocks: nn.ModuleList) -> None:
    # In place (`nn.Module.compile`, as the official code does): no `_orig_mod.` wrapper, so parameter names,
    # state-dict keys and checkpoints are those of the eager model.
    for block in blocks:
        block.compile(dynamic=False)


def compile_problem(device: torch.device) -> str | None:
    """Why `train.compile=true` cannot run on `device` here, as a one-line message; None when it can.

    torch.compile's inductor backend generates C++ on CPU (a compiler: $CXX, g++, c++ or clang++ on PATH) and
    Triton kernels on CUDA. Checked before any work, instead of a traceback at the first step.
    """
    if device.type == "cuda":
        from torch.utils._triton import has_triton

        return None if has_triton() else "train.compile=true on CUDA needs Triton (pip install triton); " \
                                         "or set train.compile=false"
    candidates = [os.environ["CXX"]] if os.environ.get("CXX") else []
    if any(shutil.which(c) for c in [*candidates, "g++", "c++", "clang++"]):
        return None
    return ("train.compile=true on CPU needs a C++ compiler (g++, c++ or clang++ on PATH, or $CXX); "
            "or set train.compile=false")


def mixed_precision_policy(compute_precision: Mapping, output_fp32: bool) -> MixedPrecisionPolicy:
    """`compute_precision.param_dtype` / `reduce_dtype` as an FSDP2 policy.

    Blocks and heads pass their compute dtype on (`output_fp32=False`: the losses upcast the head logits
    themselves, exactly, instead of a separate [tokens, prototypes] cast and its backward); the backbone
    returns fp32 features (KoLeo, Gram and the monitors run in fp32).
    """
    return MixedPrecisionPolicy(param_dtype=DTYPES[compute_precision["param_dtype"]],
                                reduce_dtype=DTYPES[compute_precision["reduce_dtype"]],
                                output_dtype=torch.float32 if output_fp32 else None)


def needs_fsdp(world_size: int, compute_precision: Mapping) -> bool:
    """Whether FSDP2 does any work: more than one rank, or a parameter or reduction dtype other than fp32."""
    return world_size > 1 or compute_precision["param_dtype"] != "fp32" or compute_precision["reduce_dtype"] != "fp32"


def prepare_blocks(backbone: nn.Module, *, activation_checkpointing: str | None, compile_blocks: bool) -> None:
    """AC ("full" / "selective" / None) -> torch.compile on each of `backbone.blocks`, in place."""
    if activation_checkpointing:
        _apply_ac(backbone.blocks, full=activation_checkpointing == "full")
    if compile_blocks:
        _apply_compile(backbone.blocks)


def shard_backbone_and_heads(modules: nn.ModuleDict, mesh: DeviceMesh, compute_precision: Mapping, *,
                             reshard_after_forward: bool, heads_reshard_after_forward: bool | None = None) -> None:
    """fully_shard(each block) -> fully_shard(backbone) -> fully_shard(each head), after `prepare_blocks`.

    `heads_reshard_after_forward` (default: `reshard_after_forward`) applies to the heads alone.
    """
    if heads_reshard_after_forward is None:
        heads_reshard_after_forward = reshard_after_forward
    block_policy = mixed_precision_policy(compute_precision, output_fp32=False)
    policy = mixed_precision_policy(compute_precision, output_fp32=True)
    backbone = modules["backbone"]
    for block in backbone.blocks:
        fully_shard(block, mesh=mesh, mp_policy=block_policy, reshard_after_forward=reshard_after_forward)
    fully_shard(backbone, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard_after_forward)
    for name, module in modules.items():
        if name != "backbone":
            fully_shard(module, mesh=mesh, mp_policy=block_policy, reshard_after_forward=heads_reshard_after_forward)


def parallelize_meta_arch(model: nn.Module, cfg: Mapping, device: torch.device, mesh: DeviceMesh | None = None,
                          *, shard: bool | None = None):
    """Shard `SSLMetaArch`'s student, teacher and Gram teacher over all ranks; returns the device mesh.

    Where `needs_fsdp` is false (one rank, fp32), AC and compile only: the modules stay plain. `shard`
    overrides that choice (True: FSDP2 even there, as the test comparing both paths needs).
    Inference-only models (teacher, Gram teacher) get neither AC nor backward; they are resharded
    explicitly after their no-grad forward (`reshard_module`) so that the EMA runs on local shards.
    """
    if mesh is None:
        mesh = init_device_mesh(device.type, (torch.distributed.get_world_size(),))
    precision = cfg["compute_precision"]
    train = cfg["train"]
    ac = ("full" if train["checkpointing_full"] else "selective") if train["checkpointing"] else None
    if shard is None:
        shard = needs_fsdp(mesh.size(), precision)
    prepare_blocks(model.student["backbone"], activation_checkpointing=ac, compile_blocks=train["compile"])
    if shard:
        # The student's heads run backward right after the losses: resharding them after their forward would
        # only all-gather them again a moment later (a third of their parameter traffic), for no lower peak.
        shard_backbone_and_heads(model.student, mesh, precision,
                                 reshard_after_forward=train["fsdp_reshard_after_forward"],
                                 heads_reshard_after_forward=False)
    for teacher in (model.teacher, model.gram_teacher):
        if teacher is not None:
            prepare_blocks(teacher["backbone"], activation_checkpointing=None, compile_blocks=train["compile"])
            if shard:
                shard_backbone_and_heads(teacher, mesh, precision, reshard_after_forward=True)
    model.to(device)  # buffers outside FSDP (loss centers, RoPE periods) follow the parameters
    logger.info("%s: %d ranks, params %s, reduce %s, AC %s, compile %s",
                "FSDP2" if shard else "plain modules (1 rank, fp32: nothing to shard)",
                mesh.size(), precision["param_dtype"], precision["reduce_dtype"], ac, train["compile"])
    return mesh


def local_shard(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's shard of an FSDP2 (DTensor) parameter or gradient, or the tensor itself."""
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def reshard_module(module: nn.Module) -> None:
    """Free the unsharded parameters of every FSDP2 module under `module` (after a no-grad forward)."""
    for sub in module.modules():
        if isinstance(sub, FSDPModule):
            sub.reshard()
