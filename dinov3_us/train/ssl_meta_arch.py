"""`SSLMetaArch`: student, EMA teacher (and optional Gram teacher), heads, losses and `forward_backward`.

The official structure and names, on any device: inputs are moved to the device of the student's
parameters, never with a hard-coded `.cuda()`. Collectives happen only inside the losses, and only
where a process group exists, so the same object trains in one process or sharded under FSDP2.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from dinov3_us.fsdp import local_shard, reshard_module
from dinov3_us.layers.dino_head import DINOHead
from dinov3_us.loss import DINOLoss, KoLeoLoss, KoLeoLossDistributed, iBOTPatchLoss
from dinov3_us.models import build_model_from_cfg
from dinov3_us.train.gram import GramAnchoring
from dinov3_us.train.monitor import collapse_metrics
from dinov3_us.train.param_groups import fuse_params_groups, get_params_groups_with_decay

logger = logging.getLogger("dinov3_us")


def _head(section: Mapping, embed_dim: int) -> DINOHead:
    return DINOHead(
        in_dim=embed_dim,
        out_dim=section["head_n_prototypes"],
        hidden_dim=section["head_hidden_dim"],
        bottleneck_dim=section["head_bottleneck_dim"],
        nlayers=section["head_nlayers"],
        norm_last_layer=section["head_norm_last_layer"],
    )


class SSLMetaArch(nn.Module):
    """DINOv3 pretraining: DINO (CLS, global + local crops), iBOT (masked patches), KoLeo and Gram anchoring."""

    def __init__(self, cfg: Mapping) -> None:
        """Build from a run config as `load_config` returns it: validated there (keys, ranges, cross-key rules)."""
        super().__init__()
        self.cfg = cfg
        student_backbone, teacher_backbone, embed_dim = build_model_from_cfg(cfg)
        self.embed_dim = embed_dim
        self.student = nn.ModuleDict(
            {"backbone": student_backbone, "dino_head": _head(cfg["dino"], embed_dim),
             "ibot_head": _head(cfg["ibot"], embed_dim)}
        )
        self.teacher = nn.ModuleDict(
            {"backbone": teacher_backbone, "dino_head": _head(cfg["dino"], embed_dim),
             "ibot_head": _head(cfg["ibot"], embed_dim)}
        )
        self.model_ema = self.teacher
        self.teacher.requires_grad_(False)
        self.dino_loss = DINOLoss(cfg["dino"]["head_n_prototypes"])
        self.ibot_patch_loss = iBOTPatchLoss(cfg["ibot"]["head_n_prototypes"])
        self.koleo_loss = (KoLeoLossDistributed(topk=cfg["dino"]["koleo_topk"]) if cfg["dino"]["koleo_loss_distributed"]
                           else KoLeoLoss())
        self.gram = GramAnchoring(cfg) if cfg["gram"]["use_loss"] else None
        self.gram_teacher = self.gram.build_teacher() if self.gram is not None else None
        self.n_local_crops = cfg["crops"]["local_crops_number"]
        self.centering = cfg["train"]["centering"]
        self.ema_params_lists = None

    @property
    def device(self) -> torch.device:
        """Device of the student's parameters (where inputs are moved)."""
        return next(self.student.parameters()).device

    def init_weights(self) -> None:
        """Initialise the student and the loss centers; copy the student into the teacher."""
        self.student.backbone.init_weights()
        self.student.dino_head.init_weights()
        self.student.ibot_head.init_weights()
        self.dino_loss.init_weights()
        self.ibot_patch_loss.init_weights()
        self.teacher.load_state_dict(self.student.state_dict())
        if self.gram is not None:
            self.gram.init_teacher(self.gram_teacher, self.teacher)

    def train(self, mode: bool = True) -> SSLMetaArch:
        """Train mode for the student; the teachers stay in eval mode (no drop path, no RoPE jitter)."""
        super().train(mode)
        self.teacher.eval()
        if self.gram_teacher is not None:
            self.gram_teacher.eval()
        return self

    def _teacher_probs(self, logits: Tensor, loss: nn.Module, temp: float, n_masked: Tensor | None = None) -> Tensor:
        if self.centering == "sinkhorn_knopp":
            if n_masked is None:
                return loss.sinkhorn_knopp_teacher(logits, teacher_temp=temp)
            return loss.sinkhorn_knopp_teacher(logits, teacher_temp=temp, n_masked_patches_tensor=n_masked)
        if self.centering == "none":  # ablation only: no centering, the classic route to collapse
            return torch.softmax(logits.float() / temp, dim=-1)
        probs = loss.softmax_center_teacher(logits, teacher_temp=temp)
        loss.update_center(logits if n_masked is None else logits.unsqueeze(0))
        return probs

    @torch.no_grad()
    def get_teacher_output(self, images: Tensor, *, teacher_temp: float, mask_indices_list: Tensor,
                           n_masked_patches_tensor: Tensor) -> dict[str, Tensor]:
        """Teacher on the global crops [n_g, B, C, H, W]: centered CLS targets and masked-patch targets."""
        n_crops, B = images.shape[:2]
        out = self.teacher.backbone(images.flatten(0, 1), is_training=True)
        cls, patch = out["x_norm_clstoken"], out["x_norm_patchtokens"]  # [n_g * B, D], [n_g * B, P, D]
        masked = torch.index_select(patch.flatten(0, 1), 0, mask_indices_list)  # [M, D]
        masked_after_head = self.teacher.ibot_head(masked)  # [M, K_ibot]
        cls_after_head = self.teacher.dino_head(cls)  # [n_g * B, K]
        cls_centered = self._teacher_probs(cls_after_head, self.dino_loss, teacher_temp)
        masked_centered = self._teacher_probs(masked_after_head, self.ibot_patch_loss, teacher_temp,
                                              n_masked_patches_tensor)
        return {
            "cls_pre_head": cls.unflatten(0, (n_crops, B)),  # [n_g, B, D]
            "patch_pre_head": patch.unflatten(0, (n_crops, B)),  # [n_g, B, P, D]
            "cls_after_head": cls_after_head.unflatten(0, (n_crops, B)),  # [n_g, B, K]
            "cls_centered": cls_centered.unflatten(0, (n_crops, B)),  # [n_g, B, K]
            "masked_patch_centered": masked_centered,  # [M, K_ibot]
        }

    def get_student_output(self, *, global_crops: Tensor, local_crops: Tensor, masks: Tensor,
                           mask_indices_list: Tensor) -> tuple[dict, dict]:
        """Student on global [n_g, B, ...] (masked) and local [n_l, B, ...] crops in one backbone call."""
        n_g, B = global_crops.shape[:2]
        n_l = local_crops.shape[0]
        g_out, l_out = self.student.backbone([global_crops.flatten(0, 1), local_crops.flatten(0, 1)],
                                             masks=[masks, None], is_training=True)
        g_cls, g_patch, l_cls = g_out["x_norm_clstoken"], g_out["x_norm_patchtokens"], l_out["x_norm_clstoken"]
        masked_pre_head = torch.index_select(g_patch.flatten(0, 1), 0, mask_indices_list)  # [M, D]
        logits = self.student.dino_head(torch.cat([g_cls, l_cls]))  # [(n_g + n_l) * B, K]
        g_logits, l_logits = logits.split([g_cls.shape[0], l_cls.shape[0]])
        student_global = {
            "cls_pre_head": g_cls.unflatten(0, (n_g, B)),  # [n_g, B, D]
            "patch_pre_head": g_patch.unflatten(0, (n_g, B)),  # [n_g, B, P, D]
            "cls_after_head": g_logits.unflatten(0, (n_g, B)),  # [n_g, B, K]
            "masked_patch_after_head": self.student.ibot_head(masked_pre_head),  # [M, K_ibot]
        }
        student_local = {"cls_after_head": l_logits.unflatten(0, (n_l, B))}  # [n_l, B, K]
        return student_global, student_local

    def compute_losses(self, *, teacher_global, student_global, student_local, masks, mask_indices_list,
                       masks_weight, gram_global=None, iteration: int = 0) -> tuple[Tensor, dict]:
        """Weighted sum of the loss terms, with the DINOv2/v3 rescaling of global and local DINO terms."""
        cfg = self.cfg
        n_g = student_global["cls_after_head"].shape[0]
        n_l = student_local["cls_after_head"].shape[0]
        ignore_diag = cfg["dino"]["global_ignore_diagonal"]
        global_terms = n_g * (n_g - 1) if ignore_diag else n_g**2
        local_terms = n_g * n_l
        losses = {
            "dino_local_crops_loss": self.dino_loss(student_local["cls_after_head"], teacher_global["cls_centered"]),
            "dino_global_crops_loss": self.dino_loss(student_global["cls_after_head"], teacher_global["cls_centered"],
                                                     ignore_diagonal=ignore_diag),
            "koleo_loss": sum(self.koleo_loss(x) for x in student_global["cls_pre_head"]) / n_g,
            "ibot_loss": self.ibot_patch_loss.forward_masked(
                student_global["masked_patch_after_head"], teacher_global["masked_patch_centered"],
                student_masks_flat=masks, n_masked_patches=mask_indices_list.shape[0], masks_weight=masks_weight),
        }
        w_dino = cfg["dino"]["loss_weight"]
        total = (w_dino * local_terms / (global_terms + local_terms) * losses["dino_local_crops_loss"]
                 + w_dino * global_terms / (global_terms + local_terms) * losses["dino_global_crops_loss"]
                 + cfg["dino"]["koleo_loss_weight"] * n_g * losses["koleo_loss"]
                 + cfg["ibot"]["loss_weight"] * losses["ibot_loss"])
        if gram_global is not None:
            losses["gram_loss"] = self.gram.loss(gram_global)
            total = total + self.gram.weight(iteration) * losses["gram_loss"]
        return total, losses

    def forward_backward(self, data: Mapping, *, teacher_temp: float, iteration: int = 0) -> tuple[Tensor, dict]:
        """One step's forward passes and `backward()`; returns the total loss and a dict of metrics."""
        dev = self.device
        n_g, n_l = 2, self.n_local_crops
        B = data["collated_local_crops"].shape[0] // n_l
        if data["collated_global_crops"].shape[0] != n_g * B:
            raise ValueError(f"expected {n_g} x {B} global crops, got {data['collated_global_crops'].shape[0]}")
        global_crops = data["collated_global_crops"].to(dev, non_blocking=True).unflatten(0, (n_g, B))
        local_crops = data["collated_local_crops"].to(dev, non_blocking=True).unflatten(0, (n_l, B))
        masks = data["collated_masks"].to(dev, non_blocking=True)
        mask_indices_list = data["mask_indices_list"].to(dev, non_blocking=True)
        masks_weight = data["masks_weight"].to(dev, non_blocking=True)
        n_masked = data["n_masked_patches"].to(dev, non_blocking=True)

        teacher_global = self.get_teacher_output(global_crops, teacher_temp=teacher_temp,
                                                 mask_indices_list=mask_indices_list, n_masked_patches_tensor=n_masked)
        reshard_module(self.teacher)  # free the teacher's gathered weights before the student's forward
        student_global, student_local = self.get_student_output(global_crops=global_crops, local_crops=local_crops,
                                                                masks=masks, mask_indices_list=mask_indices_list)
        gram_global = None
        if self.gram is not None:
            gram_crops = data.get("collated_gram_teacher_crops")
            gram_global = self.gram.targets(self.gram_teacher, gram_crops, teacher_global, student_global, masks)
        total, losses = self.compute_losses(teacher_global=teacher_global, student_global=student_global,
                                            student_local=student_local, masks=masks,
                                            mask_indices_list=mask_indices_list, masks_weight=masks_weight,
                                            gram_global=gram_global, iteration=iteration)
        total.backward()
        metrics = {k: v.detach() for k, v in losses.items()}
        metrics.update(collapse_metrics(teacher_global, student_global, teacher_temp))
        metrics["local_batch_size"] = B
        return total.detach(), metrics

    @torch.no_grad()
    def update_ema(self, m: float) -> None:
        """teacher <- m * teacher + (1 - m) * student, parameter by parameter (foreach ops on local shards)."""
        if self.ema_params_lists is None:  # local shards under FSDP2 (the same sharding for student and teacher)
            pairs = [(local_shard(s), local_shard(t)) for k in self.student
                     for s, t in zip(self.student[k].parameters(), self.teacher[k].parameters())]
            self.ema_params_lists = ([p[0] for p in pairs], [p[1] for p in pairs])
        student_params, teacher_params = self.ema_params_lists
        torch._foreach_mul_(teacher_params, m)
        torch._foreach_add_(teacher_params, student_params, alpha=1 - m)

    def update_gram(self, iteration: int) -> bool:
        """Refresh the Gram teacher from the EMA teacher when its schedule says so; True if it did."""
        return self.gram is not None and self.gram.maybe_refresh(self.gram_teacher, self.teacher, iteration)

    def get_params_groups(self) -> list[dict]:
        """Fused optimizer groups of every student submodule (backbone, dino_head, ibot_head)."""
        optim = self.cfg["optim"]
        groups = []
        for name, module in self.student.items():
            groups += get_params_groups_with_decay(module, prefix=name, lr_decay_rate=optim["layerwise_decay"],
                                                   patch_embed_lr_mult=optim["patch_embed_lr_mult"],
                                                   dino_head_wd_multiplier=optim["dino_head_wd_multiplier"])
        return fuse_params_groups(groups)
