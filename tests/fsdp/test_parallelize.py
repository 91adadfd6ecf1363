"""parallelize_meta_arch: AC (full / selective) gives the same step as no AC; bf16 policy runs; teacher reshards;
one rank in fp32 keeps plain modules, whose steps equal FSDP2's on one rank; train.compile compiles the blocks in
place (same parameter names) and steps as eager does."""

import datetime
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from PIL import Image
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor

from dinov3_us.checkpointer.export import full_state_dict
from dinov3_us.configs import load_config
from dinov3_us.data.pipeline import build_collate_fn, build_ssl_transform
from dinov3_us.fsdp import needs_fsdp, parallelize_meta_arch
from dinov3_us.train.optimizer import build_adamw
from dinov3_us.train.param_groups import clean_param_name
from dinov3_us.train.schedules import build_schedulers
from dinov3_us.train.ssl_meta_arch import SSLMetaArch
from dinov3_us.train.step import train_step

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


def _three_steps(overrides: list[str], shard: bool | None):
    """Three full fp32 steps (AdamW, clipping, selective AC, EMA) on one rank; `shard` as `parallelize_meta_arch`'s."""
    cfg = load_config(TINY, ["compute_precision.param_dtype=fp32", "train.checkpointing=true", *overrides])
    torch.manual_seed(0)
    model = SSLMetaArch(cfg)
    model.init_weights()
    parallelize_meta_arch(model, cfg, torch.device("cpu"), shard=shard)
    model.train()
    optimizer = build_adamw(model.get_params_groups())
    schedules = build_schedulers(cfg, world_size=1)
    torch.manual_seed(1)
    losses = [train_step(model, optimizer, _batch(cfg), schedules, it, clip_grad=cfg.optim.clip_grad)["total_loss"]
              for it in range(3)]
    return model, losses


def _fp32_steps(fsdp: bool):
    """Plain modules (one rank, fp32), or FSDP2 forced on."""
    model, losses = _three_steps(BASE, shard=True if fsdp else None)
    return model, losses, full_state_dict(model.student), full_state_dict(model.teacher)


def _compiled_steps(compiled: bool):
    """Under FSDP2 (forced at one rank) with drop path, blocks compiled or not.

    fp32, so that compiled and eager differ by float rounding only (in bf16, inductor's fused kernels round once
    where eager rounds after every op: ~1e-4 apart)."""
    model, losses = _three_steps(["student.drop_path_rate=0.2", "student.layerscale=0.1",
                                  f"train.compile={str(compiled).lower()}"], shard=True)
    blocks = [*model.student.backbone.blocks, *model.teacher.backbone.blocks]
    return {"losses": losses, "names": list(model.state_dict()), "student": full_state_dict(model.student),
            "compiled_blocks": sum(getattr(b, "_compiled_call_impl", None) is not None for b in blocks),
            "n_blocks": len(blocks)}


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
        plain, plain_losses, plain_student, plain_teacher = _fp32_steps(fsdp=False)
        assert not any(isinstance(m, FSDPModule) for m in plain.modules())
        assert not any(isinstance(p, DTensor) for p in plain.parameters())
        forced, fsdp_losses, fsdp_student, fsdp_teacher = _fp32_steps(fsdp=True)
        assert isinstance(forced.student.backbone.blocks[0], FSDPModule)
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(Path(out).parent / "inductor")  # this test's own cache
        import torch._dynamo.utils as dynamo_utils

        eager = _compiled_steps(False)
        dynamo_utils.counters.clear()
        compiled = _compiled_steps(True)
        compiled["dynamo_graphs"] = int(dynamo_utils.counters["stats"].get("unique_graphs", 0))
        torch.save({"results": results, "bf16": bf16_loss, "plain": (plain_losses, plain_student, plain_teacher),
                    "fsdp": (fsdp_losses, fsdp_student, fsdp_teacher), "eager": eager, "compiled": compiled}, out)
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """The one-rank worker's results (one process for every test of this module)."""
    folder = tmp_path_factory.mktemp("parallelize")
    mp.spawn(_worker, args=(str(folder / "init"), str(folder / "out.pt")), nprocs=1, join=True)
    return torch.load(folder / "out.pt", weights_only=False)


@pytest.mark.slow
def test_activation_checkpointing_matches_and_bf16_runs(saved):
    loss, grads = saved["results"]["none"]
    for name in ("selective", "full"):
        other_loss, other_grads = saved["results"][name]
        assert other_loss == pytest.approx(loss, rel=1e-6)
        assert other_grads.keys() == grads.keys()
        for key, grad in grads.items():
            torch.testing.assert_close(other_grads[key], grad, atol=1e-7, rtol=1e-5, msg=f"{name}: {key}")
    assert np.isfinite(saved["bf16"]) and saved["bf16"] == pytest.approx(loss, rel=0.05)  # bf16 ~ fp32


@pytest.mark.slow
def test_one_rank_fp32_plain_modules_equal_fsdp2(saved):
    """One rank, fp32: `parallelize_meta_arch` keeps plain modules (FSDP2 there only copies); three steps with
    AdamW, clipping, selective AC and the EMA give the same losses and weights as FSDP2 on one rank."""
    plain_losses, plain_student, plain_teacher = saved["plain"]
    fsdp_losses, fsdp_student, fsdp_teacher = saved["fsdp"]
    # Equal bit for bit on this machine. The tolerance is for other CPUs, where oneDNN may pick another kernel
    # for weights that FSDP2 keeps in one flat buffer (other alignment), which changes the last bits only.
    assert plain_losses == pytest.approx(fsdp_losses, rel=1e-6)
    for plain, fsdp in ((plain_student, fsdp_student), (plain_teacher, fsdp_teacher)):
        assert plain.keys() == fsdp.keys()
        for key, value in fsdp.items():
            torch.testing.assert_close(plain[key], value, rtol=1e-5, atol=1e-6, msg=key)


@pytest.mark.slow
def test_compile_blocks_in_place_steps_as_eager(saved):
    """train.compile: every student and teacher block is compiled in place (parameter names, hence checkpoint keys,
    are the eager model's: no `_orig_mod.`), dynamo really produced graphs, and three steps under FSDP2 with
    selective AC and drop path (the same samples dropped) give the eager losses and weights to float rounding."""
    eager, compiled = saved["eager"], saved["compiled"]
    assert compiled["compiled_blocks"] == compiled["n_blocks"] > 0 and eager["compiled_blocks"] == 0
    assert compiled["dynamo_graphs"] >= 2  # the student's training graph and the teacher's no-grad one
    assert compiled["names"] == eager["names"] and not any("_orig_mod" in n for n in compiled["names"])
    assert compiled["losses"] == pytest.approx(eager["losses"], rel=1e-5)
    assert compiled["student"].keys() == eager["student"].keys()
    for key, value in eager["student"].items():  # 1e-6 apart here after three AdamW steps
        torch.testing.assert_close(compiled["student"][key], value, rtol=1e-4, atol=2e-5, msg=key)


def test_needs_fsdp():
    fp32 = {"param_dtype": "fp32", "reduce_dtype": "fp32"}
    assert not needs_fsdp(1, fp32)
    assert needs_fsdp(2, fp32)
    assert needs_fsdp(1, {**fp32, "param_dtype": "bf16"})
    assert needs_fsdp(1, {**fp32, "reduce_dtype": "bf16"})
