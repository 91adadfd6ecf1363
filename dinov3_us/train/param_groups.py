"""Optimizer parameter groups: layer-wise lr decay, patch-embedding lr multiplier, weight-decay exclusions.

No weight decay on biases, norm parameters, LayerScale gammas and the learned tokens (`cls_token`,
`storage_tokens`, `mask_token`). The official code's comment promises the tokens too, but its
condition only matches biases, norms and gammas; here the code does what the comment says.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable

from torch import nn

logger = logging.getLogger("dinov3_us")

LEARNED_TOKENS = ("cls_token", "storage_tokens", "mask_token")
WRAPPER_NAMES = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")


def clean_param_name(name: str) -> str:
    """Drop the name parts added by FSDP1, activation checkpointing and torch.compile wrappers."""
    for part in WRAPPER_NAMES:
        name = name.replace(part, "")
    return name


def layer_id(name: str, num_layers: int) -> int:
    """0 for embeddings and learned tokens, i + 1 for `blocks.i.*`, num_layers + 1 for the rest."""
    if name.startswith(("patch_embed", *LEARNED_TOKENS)):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return num_layers + 1


def no_weight_decay(name: str) -> bool:
    """Biases, norms, LayerScale gammas and learned tokens get no weight decay."""
    leaf = name.rsplit(".", 1)[-1]
    return leaf == "bias" or "norm" in name or leaf == "gamma" or leaf in LEARNED_TOKENS


def get_params_groups_with_decay(
    model: nn.Module,
    prefix: str = "",
    lr_decay_rate: float = 1.0,
    patch_embed_lr_mult: float = 1.0,
    dino_head_wd_multiplier: float = 1.0,
) -> list[dict]:
    """One group per trainable parameter of `model` (a backbone or a head named `prefix`).

    Each group has `name`, `params`, `lr_multiplier`, `wd_multiplier` and `is_last_layer`.
    Layer-wise decay applies to backbones (modules with `blocks`): lr x rate ** (depth + 1 - layer_id).
    """
    num_layers = len(model.blocks) if hasattr(model, "blocks") else 0
    groups = []
    for raw_name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        name = clean_param_name(raw_name)
        full_name = f"{prefix}.{name}" if prefix else name
        lr_mult = lr_decay_rate ** (num_layers + 1 - layer_id(name, num_layers)) if num_layers else 1.0
        if name.startswith("patch_embed"):
            lr_mult *= patch_embed_lr_mult
        wd_mult = 0.0 if no_weight_decay(name) else (dino_head_wd_multiplier if "dino_head" in prefix else 1.0)
        groups.append(
            {
                "name": full_name,
                "params": param,
                "lr_multiplier": lr_mult,
                "wd_multiplier": wd_mult,
                "is_last_layer": "last_layer" in name,
            }
        )
        logger.debug("%s: lr x%.4g, wd x%.4g", full_name, lr_mult, wd_mult)
    return groups


def fuse_params_groups(groups: Iterable[dict], keys=("lr_multiplier", "wd_multiplier", "is_last_layer")) -> list[dict]:
    """Merge groups with equal multipliers into one optimizer group each (fewer, larger foreach kernels)."""
    fused: dict[tuple, dict] = defaultdict(lambda: {"params": [], "names": []})
    for g in groups:
        ident = tuple(g[k] for k in keys)
        fused[ident].update({k: g[k] for k in keys})
        fused[ident]["params"].append(g["params"])
        fused[ident]["names"].append(g["name"])
    return list(fused.values())


def apply_optim_scheduler(optimizer, lr: float, wd: float, last_layer_lr: float) -> None:
    """Set each group's lr and weight decay from the schedule values and the group's multipliers."""
    for group in optimizer.param_groups:
        group["weight_decay"] = wd * group["wd_multiplier"]
        group["lr"] = (last_layer_lr if group["is_last_layer"] else lr) * group["lr_multiplier"]
