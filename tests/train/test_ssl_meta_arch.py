"""SSLMetaArch: losses, gradients, EMA, centering variants, Gram anchoring, config checks, a 100-step run."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dinov3_us.configs import load_config
from dinov3_us.data.pipeline import build_collate_fn, build_ssl_transform
from dinov3_us.errors import ConfigError
from dinov3_us.train.monitor import CollapseWatch
from dinov3_us.train.optimizer import build_adamw
from dinov3_us.train.schedules import build_schedulers
from dinov3_us.train.ssl_meta_arch import SSLMetaArch
from dinov3_us.train.step import train_step

TINY = Path(__file__).resolve().parents[2] / "configs" / "train" / "tiny_cpu.yaml"


def make(overrides=()):
    torch.manual_seed(0)
    cfg = load_config(TINY, list(overrides))
    model = SSLMetaArch(cfg)
    model.init_weights()
    return cfg, model.train()


def synthetic_batch(cfg, n=4, seed=0):
    rng = np.random.default_rng(seed)
    transform = build_ssl_transform(cfg)
    images = [Image.fromarray(rng.integers(0, 255, (48, 64), dtype=np.uint8)) for _ in range(n)]
    return build_collate_fn(cfg)([transform(im, generator=seed * 100 + i) for i, im in enumerate(images)],
                                 generator=seed)


def test_forward_backward_grads_and_loss_composition():
    cfg, model = make()
    batch = synthetic_batch(cfg)
    loss, m = model.forward_backward(batch, teacher_temp=0.05)
    assert torch.isfinite(loss)
    assert [n for n, p in model.student.named_parameters() if p.grad is None] == []
    assert all(p.grad is None for p in model.teacher.parameters())
    n_g, n_l = 2, cfg.crops.local_crops_number
    g_terms, l_terms = n_g * (n_g - 1), n_g * n_l
    expected = (l_terms / (g_terms + l_terms) * m["dino_local_crops_loss"]
                + g_terms / (g_terms + l_terms) * m["dino_global_crops_loss"]
                + cfg.dino.koleo_loss_weight * n_g * m["koleo_loss"] + m["ibot_loss"])
    torch.testing.assert_close(loss, expected)
    for key in ("teacher_entropy", "teacher_batch_entropy", "target_entropy", "teacher_cls_std", "student_cls_std"):
        assert key in m


def test_update_ema_extremes():
    cfg, model = make()
    with torch.no_grad():
        for p in model.student.parameters():
            p.add_(1.0)
    before = [p.clone() for p in model.teacher.parameters()]
    model.update_ema(1.0)
    assert all(torch.equal(a, b) for a, b in zip(before, model.teacher.parameters()))
    model.update_ema(0.0)
    for s, t in zip(model.student.parameters(), model.teacher.parameters()):
        torch.testing.assert_close(s, t)


def test_init_copies_student_into_teacher_and_teacher_stays_eval():
    _, model = make()
    for (ks, s), (kt, t) in zip(model.student.state_dict().items(), model.teacher.state_dict().items()):
        assert ks == kt and torch.equal(s, t)
    model.train()
    assert model.student.training and not model.teacher.training


def test_head_norm_last_layer_reaches_the_heads():
    cfg, model = make(["dino.head_norm_last_layer=true"])
    assert model.student.dino_head.norm_last_layer and model.teacher.dino_head.norm_last_layer
    assert not model.student.ibot_head.norm_last_layer
    loss, _ = model.forward_backward(synthetic_batch(cfg), teacher_temp=0.05)
    assert torch.isfinite(loss)


@pytest.mark.parametrize("centering", ["softmax", "none"])
def test_other_centerings(centering):
    cfg, model = make([f"train.centering={centering}"])
    loss, _ = model.forward_backward(synthetic_batch(cfg), teacher_temp=0.05)
    assert torch.isfinite(loss)
    if centering == "softmax":
        model.dino_loss.apply_center_update()
        assert model.dino_loss.center.abs().sum() > 0  # the EMA center moved


def test_gram_with_ema_teacher_and_with_a_separate_teacher():
    cfg, model = make(["gram.use_loss=true", "gram.ema_teacher=true", "gram.rep_update=false"])
    _, m = model.forward_backward(synthetic_batch(cfg), teacher_temp=0.05)
    assert torch.isfinite(m["gram_loss"])
    cfg, model = make(["gram.use_loss=true", "gram.it_load_ema_teacher=0", "crops.gram_teacher_crops_size=64",
                       "gram.update_frequency=2", "gram.max_updates=1"])
    batch = synthetic_batch(cfg)
    assert batch["collated_gram_teacher_crops"].shape[-1] == 64  # 8 x 8 patches, resized to the student's 4 x 4
    with pytest.raises(ConfigError, match="before it was loaded"):
        model.forward_backward(batch, teacher_temp=0.05)
    assert model.update_gram(0) and bool(model.gram.initialized)
    _, m = model.forward_backward(batch, teacher_temp=0.05)
    assert torch.isfinite(m["gram_loss"])
    assert not model.update_gram(1) and model.update_gram(2) and not model.update_gram(4)  # max_updates=1
    assert "gram.n_updates" in model.state_dict()


@pytest.mark.parametrize(
    "override, match",
    [("crops.local_crops_number=0", "local_crops_number"), ("ibot.mask_ratio_min_max=[0.5,0.1]", "min < max"),
     ("gram.use_loss=true", "gram.use_loss needs"), ("dino.koleo_topk=2", "koleo_loss_distributed")],
)
def test_config_errors(override, match):
    with pytest.raises(ConfigError, match=match):
        make([override])


def hc18_images(data_dir, n=64, size=(96, 64)):
    files = sorted((data_dir / "hc18" / "training_set").glob("*HC.png"))[:n]
    return [Image.open(f).convert("L").resize(size, Image.BICUBIC) for f in files]


def run_steps(cfg, model, images, steps=100):
    transform, collate = build_ssl_transform(cfg), build_collate_fn(cfg)
    optimizer = build_adamw(model.get_params_groups())
    schedules = build_schedulers(cfg)
    history = []
    for it in range(steps):
        idx = np.random.default_rng(it).choice(len(images), cfg.train.batch_size_per_gpu, replace=False)
        batch = collate([transform(images[i], generator=it * 1000 + j) for j, i in enumerate(idx)], generator=it)
        history.append(train_step(model, optimizer, batch, schedules, it, clip_grad=cfg.optim.clip_grad))
    return history


@pytest.mark.slow
def test_100_steps_on_hc18_loss_falls_and_collapse_watch(data_dir):
    """Healthy recipe: loss falls, no collapse flag. No centering: the watch trips."""
    images = hc18_images(data_dir)
    cfg, model = make(["student.drop_path_rate=0.0"])
    history = run_steps(cfg, model, images)
    first, last = np.mean([h["total_loss"] for h in history[:10]]), np.mean([h["total_loss"] for h in history[-10:]])
    assert last < first - 1.0, (first, last)
    assert all(h["skipped"] == 0 for h in history)
    watch = CollapseWatch()
    assert watch.check(history[-1]) == [], history[-1]

    cfg, model = make(["student.drop_path_rate=0.0", "train.centering=none"])
    broken = run_steps(cfg, model, images)
    problems = watch.check(broken[-1])
    assert any("teacher_batch_entropy" in p for p in problems), broken[-1]
