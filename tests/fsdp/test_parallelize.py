"""parallelize_meta_arch: AC (full / selective) gives the same step as no AC; bf16 policy runs; teacher reshards."""

import datetime
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from PIL import Image
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor

from dinov3_us.configs import load_config
from dinov3_us.data.pipeline import build_collate_fn, build_ssl_transform
from dinov3_us.fsdp import parallelize_meta_arch
from dinov3_us.train.param_groups import clean_param_name
from dinov3_us.train.ssl_meta_arch import SSLMetaArch

TINY = Path(__file__).resolve().parents[2] / "configs" / "train" / "tiny_cpu.yaml"
BASE = ["student.drop_path_rate=0.0", "student.layerscale=0.1"]


def _batch(cfg):
    rng = np.random.default_rng(0)
    transform = build_ssl_transform(cfg)
    images = [Image.fromarray(rng.integers(0, 255, (40, 40), dtype=np.uint8)) for _ in range(4)]
    return build_collate_fn(cfg)([transform(im, generator=i) for i, im in enumerate(images)], generator=0)


def _step(overrides):
    cfg = load_config(TINY, BASE + overrides)
    torch.manual_seed(0)
    model = SSLMetaArch(cfg)
    model.init_weights()
    parallelize_meta_arch(model, cfg, torch.device("cpu"))
    model.train()
    torch.manual_seed(1)
    loss, _ = model.forward_backward(_batch(cfg), teacher_temp=0.05)
    grads = {clean_param_name(n): p.grad.full_tensor() for n, p in model.student.named_parameters()}
    teacher_params = list(model.teacher.parameters())
    return model, float(loss), grads, teacher_params


def _worker(rank: int, init_file: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=0, world_size=1,
                            timeout=datetime.timedelta(seconds=60))
    try:
        model, loss, grads, teacher = _step([])
        assert all(isinstance(p, DTensor) for p in model.student.parameters())
        assert isinstance(model.student.backbone.blocks[0], FSDPModule)
        # the teacher is resharded after its no-grad forward: its parameters are the sharded DTensors again
        assert all(isinstance(p, DTensor) for p in teacher)
        results = {"none": (loss, grads)}
        for name, overrides in {"selective": ["train.checkpointing=true"],
                                "full": ["train.checkpointing=true", "train.checkpointing_full=true"]}.items():
            results[name] = _step(overrides)[1:3]
        _, bf16_loss, _, _ = _step(["compute_precision.param_dtype=bf16"])
        torch.save({"results": results, "bf16": bf16_loss}, out)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_activation_checkpointing_matches_and_bf16_runs(tmp_path):
    out = tmp_path / "out.pt"
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(out)), nprocs=1, join=True)
    saved = torch.load(out, weights_only=False)
    loss, grads = saved["results"]["none"]
    for name in ("selective", "full"):
        other_loss, other_grads = saved["results"][name]
        assert other_loss == pytest.approx(loss, rel=1e-6)
        assert other_grads.keys() == grads.keys()
        for key, grad in grads.items():
            torch.testing.assert_close(other_grads[key], grad, atol=1e-7, rtol=1e-5, msg=f"{name}: {key}")
    assert np.isfinite(saved["bf16"]) and saved["bf16"] == pytest.approx(loss, rel=0.05)  # bf16 ~ fp32
