"""Full fine-tuning: learns an easy task far above chance, stops early on val, layer-wise lr decay."""

import torch

from dinov3_us.eval.backbone import load_eval_backbone
from dinov3_us.eval.config import FinetuneConfig
from dinov3_us.eval.data import EvalDataset, EvalTransform
from dinov3_us.eval.finetune import FinetuneModel, build_optimizer, predict, train_finetune


def test_finetune_beats_chance_and_stops_early(blob_dir):
    backbone = load_eval_backbone("random", arch="vit_test", img_size=32, drop_path_rate=0.0)
    t = EvalTransform(32, 1)
    train, val, test = (EvalDataset(f"{blob_dir}:{s}", t) for s in ("train", "val", "test"))
    cfg = FinetuneConfig(epochs=40, batch_size=8, lr=0.3, warmup_epochs=1, patience=4, layer_decay=0.9,
                         crop_scale=[0.8, 1.0], hflip=0.0, drop_path_rate=0.0)
    result = train_finetune(backbone.model, train, val, 3, cfg, device=torch.device("cpu"))
    assert result.stopped_early and result.epochs_run < 40
    assert result.epochs_run == result.best_epoch + 4
    assert result.best_score == max(h["val_score"] for h in result.history)
    accuracy = (predict(result.model, test, batch_size=16, device="cpu") == test.targets).mean()
    assert accuracy >= 0.8  # chance: 1/3


def test_layer_wise_lr_decay_groups():
    backbone = load_eval_backbone("random", arch="vit_test", img_size=32).model  # 2 blocks
    opt = build_optimizer(FinetuneModel(backbone, 3), FinetuneConfig(layer_decay=0.5, patch_embed_lr_mult=0.2))
    mults = {name: g["lr_multiplier"] for g in opt.param_groups for name in g["names"]}
    assert mults["head.weight"] == 1.0 and mults["norm.weight"] == 1.0
    assert mults["blocks.1.attn.qkv.weight"] == 0.5 and mults["blocks.0.attn.qkv.weight"] == 0.25
    assert mults["cls_token"] == 0.125 and mults["patch_embed.proj.weight"] == 0.125 * 0.2
    wd = {name: g["wd_multiplier"] for g in opt.param_groups for name in g["names"]}
    assert wd["head.bias"] == 0.0 and wd["head.weight"] == 1.0 and wd["blocks.0.norm1.weight"] == 0.0
