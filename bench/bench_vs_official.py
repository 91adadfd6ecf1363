"""Our DINOv3 training step against the official facebookresearch/dinov3 step: same config, weights and batches.

The parent process builds, once, the batches (random crops collated by our `build_collate_fn`, with real
iBOT block masks from `MaskingGenerator`) and ONE initial student state dict (our `SSLMetaArch`, seed 0,
official key names), and saves them to a temporary folder (removed at the end). It then alternates worker
processes, round by round: ours, official, ours, official, ... Each worker loads the same weights strictly
into its student and teacher (backbone, DINO head, iBOT head), builds its side's step exactly as its
training loop does, runs `--warmup` steps (the first one, iteration 0, gives the step-0 losses) and then
`--steps` timed steps, and prints one JSON line (per-step seconds, step-0 losses, peak memory).

    python bench/bench_vs_official.py --official-repo PATH [--configs S-bf16 S-fp32 T]
        [--config OUR_TRAIN.yaml [KEY=VALUE ...]] [--side ours|official|both] [--warmup 2] [--steps 3]
        [--rounds 2] [--threads N] [--compile on|off]
        [--output bench/results/vs_official.json]

Configs (the same keys are applied to both sides):
    S-bf16  ViT-S/16, 4 storage tokens, 2 x 224 + 8 x 96 crops, 65,536 DINO and iBOT prototypes, batch 8,
            bf16 parameters (compute_precision.param_dtype=bf16: the FSDP2 MixedPrecisionPolicy on both sides).
    S-fp32  the same with fp32 parameters.
    T       192 dim, 4 blocks, 3 heads, patch 16, 4 storage tokens, 2 x 64 + 4 x 32 crops, 4,096 prototypes,
            batch 8, fp32. Neither side has a 192 x 4 preset: the bench registers `vit_bench_t` (192, 4, 3,
            MLP ratio 4) at run time on both sides (our ARCHS table and arch choices; a constructor in the
            official `dinov3.models.vision_transformer` namespace).
    --config  one of our YAML training configs plus dotlist overrides. Every key of our resolved config that
            the official config also has is set there (train.compile: see --compile); a key
            given explicitly (in the file or an override) that the official config lacks is an error, except
            our own keys (runtime.*, attention.*, data.*, augment.*, train.log_period,
            train.max_consecutive_nonfinite, train.selfdistill_alarm_iterations, train.fsdp_reshard_after_forward,
            schedules.enabled), which are not passed on. Our `schedules` section is passed on only when
            schedules.enabled is true (the official code switches to schedules v2 on its mere presence).
Both sides: in_chans 3, masking from ibot.mask_sample_probability / mask_ratio_min_max, the config's drop path
and optim.clip_grad, each side's own teacher-temperature schedule (0.04 at iteration 0), Sinkhorn-Knopp.

Our step: `SSLMetaArch` -> `parallelize_meta_arch` (FSDP2 in a 1-process gloo group from `init_distributed`;
plain modules for fp32 parameters and reduction, as the trainer runs one process) ->
`build_adamw(model.get_params_groups(), betas)` -> `build_schedulers` -> `train_step(..., clip_grad)`, in the
trainer's order; our weights are loaded before sharding, as the trainer loads pretrained weights.

Official step, in the order of its `train.py` (`main` then `do_train`): `SSLMetaArch` built on the meta device,
`prepare_for_distributed_training()` (its `ac_compile_parallelize`: compile per block and per head when
train.compile, FSDP2 per block, backbone and head), NaN fill, `model.train()`, its `build_optimizer`
(torch AdamW over its fused groups), its `build_schedulers`, `init_weights()`, then our weights
(`set_model_state_dict`, full state dict, strict). Per step: `apply_optim_scheduler`, `zero_grad`,
`forward_backward`, `clip_grad_norm_` per student submodule, the all-gather of the loss and all-reduce of the
metrics with the NaN check, `optimizer.step()`, `update_ema(momentum)`; `gc.disable()` as its loop does.
Its config also gets its own `apply_scaling_rules_to_cfg` (as `setup_config`); the crops are cast to
compute_precision.param_dtype as its collate does (our collate keeps fp32).

Run-time adaptations of the official code (worker process only, nothing is written to its checkout):
    - `torchvision`: when it is not importable, an import hook serves stub modules for `torchvision.*` whose
      attributes are inert classes (only its data augmentation uses them; the step does not).
    - CPU only (`--device cpu`, the default without CUDA): `torch.Tensor.cuda` returns the tensor itself
      (its `forward_backward` moves the batch with `.cuda()`); `torch.cuda.synchronize`, `empty_cache`,
      `set_device` and `manual_seed_all` are no-ops; `init_device_mesh` and `DeviceMesh.from_group`, as
      seen by its `dinov3.fsdp.ac_compile_parallelize`, build CPU meshes; `nn.Module.to_empty(device="cuda")`
      lands on the CPU; its NaN fill (done on "cuda" in its `main`) is done on the CPU.
    - Its process group: our 1-process gloo group, registered as its default group
      (`dinov3.distributed.torch_distributed_wrapper._DEFAULT_PROCESS_GROUP`).
    - Its loop all-gathers the 0-d loss with `all_gather_into_tensor`; gloo refuses a 0-d input, so the
      bench's copy of that loop passes it as a 1-element tensor.
    - T only: the `vit_bench_t` constructor (above).
    On CUDA nothing but the torchvision stub (when needed) and the process group (nccl) is changed.

Where the two sides do not do the same work (by design of each code base, not of the bench):
    - Drop path: none. Both sides draw the kept samples of each crop size for attention, then for the MLP,
      from the same seed, and run the norms and linear layers over the tokens of all crop sizes together:
      the step-0 losses agree to float rounding (~1e-7 relative) with drop path on.
    - `--compile on` (the default, as the official default config) sets train.compile=true on both sides;
      `--compile off` sets it false on both. With it, the official compiles every block and every head of
      student and teacher, ours every block of student and teacher (`parallelize_meta_arch`). The official
      also compiles its iBOT Sinkhorn-Knopp module in `iBOTPatchLoss.__init__` whatever train.compile says
      (so `--compile off` still runs one dynamo frame there). Compilation happens in the warm-up steps.
    - Ours computes collapse metrics (teacher entropy etc.) in forward_backward and clips all student
      parameters at once; the official clips per submodule (three norms, each read with `.item()`).
    - bf16: our collate keeps fp32 crops (cast by FSDP2 at the patch embedding); the official collate casts
      them to bf16. Both sides' heads return bf16 logits; our backbone returns fp32 features.

The report (a table, and JSON at --output): per config and side, the median step time over all timed steps of
all rounds with min-max, img/s (batch / median), ours/official img/s, peak memory (ru_maxrss; on CUDA also
max_memory_allocated), the step-0 losses of both sides (flagged when they differ by more than 1e-2 relative),
whether each side compiled (dynamo frame and graph counts) and the warm-up seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.abc
import importlib.machinery
import json
import math
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

RESULT_PREFIX = "BENCH_VS_OFFICIAL_RESULT "
LOSS_KEYS = ("dino_local_crops_loss", "dino_global_crops_loss", "koleo_loss", "ibot_loss", "total_loss")
LOSS_RTOL = 1e-2
BENCH_T_ARCH = ("vit_bench_t", 192, 4, 3)  # name, embed_dim, depth, heads
S_OVERRIDES = ["student.arch=vit_small", "student.patch_size=16", "student.n_storage_tokens=4",
               "crops.global_crops_size=224", "crops.local_crops_size=96", "crops.local_crops_number=8",
               "dino.head_n_prototypes=65536", "ibot.head_n_prototypes=65536", "train.batch_size_per_gpu=8",
               "student.in_chans=3"]
CONFIGS: dict[str, tuple[str | None, list[str]]] = {
    "S-bf16": (None, S_OVERRIDES + ["compute_precision.param_dtype=bf16"]),
    "S-fp32": (None, S_OVERRIDES + ["compute_precision.param_dtype=fp32"]),
    "T": (None, [f"student.arch={BENCH_T_ARCH[0]}", "student.patch_size=16", "student.n_storage_tokens=4",
                 "crops.global_crops_size=64", "crops.local_crops_size=32", "crops.local_crops_number=4",
                 "dino.head_n_prototypes=4096", "ibot.head_n_prototypes=4096", "train.batch_size_per_gpu=8",
                 "student.in_chans=3", "compute_precision.param_dtype=fp32"]),
}
# Keys of ours that the official config does not have: never passed on.
OURS_ONLY_SECTIONS = ("runtime", "attention", "data", "augment")
OURS_ONLY_KEYS = {"train.log_period", "train.max_consecutive_nonfinite", "train.selfdistill_alarm_iterations",
                  "train.fsdp_reshard_after_forward", "schedules.enabled"}


class UsageError(Exception):
    """A user error reported as one line with exit code 2."""


# ----------------------------------------------------------------------------------------------- configs


def register_bench_arch() -> None:
    """Make `vit_bench_t` a valid `student.arch` on our side (this process only)."""
    from dinov3_us.configs import config as config_module
    from dinov3_us.models import ARCHS

    name, dim, depth, heads = BENCH_T_ARCH
    ARCHS.setdefault(name, (dim, depth, heads))
    if name not in config_module.CHOICES["student.arch"]:
        config_module.CHOICES["student.arch"] = (*config_module.CHOICES["student.arch"], name)


def our_config(spec: dict, device: str):
    """Our resolved config for `spec` ({"path": yaml or None, "overrides": [...], "compile": bool}) on `device`.

    `spec["compile"]`, where present, sets train.compile (after the file and the overrides)."""
    from dinov3_us.configs import load_config

    register_bench_arch()
    backend = "nccl" if device == "cuda" else "gloo"
    compile_ = [f"train.compile={str(spec['compile']).lower()}"] if "compile" in spec else []
    return load_config(spec["path"], [*spec["overrides"], *compile_, f"runtime.device={device}",
                                      f"runtime.dist_backend={backend}"])


def explicit_keys(spec: dict) -> list[str]:
    """The keys set explicitly by `spec`: those of its YAML file and of its overrides."""
    from dinov3_us.configs.config import flatten, parse_dotlist, read_yaml

    keys = list(flatten(read_yaml(spec["path"]))) if spec["path"] else []
    return keys + list(flatten(parse_dotlist(spec["overrides"])))


def _ours_only(key: str) -> bool:
    return key.split(".")[0] in OURS_ONLY_SECTIONS or key in OURS_ONLY_KEYS


def official_values(spec: dict, official_default) -> dict:
    """{official key: value} to set on the official default config, from our resolved config for `spec`.

    Raises:
        UsageError: a key given explicitly in `spec` is neither in the official config nor one of ours.
    """
    from omegaconf import OmegaConf

    from dinov3_us.configs.config import flatten

    missing = object()
    cfg = our_config(spec, "cpu")
    flat = flatten(cfg.to_dict())
    for key in explicit_keys(spec):
        if (not _ours_only(key) and not key.startswith("schedules.")
                and OmegaConf.select(official_default, key, default=missing) is missing):
            raise UsageError(f"config key {key!r} does not exist in the official config")
    out = {}
    for key, value in flat.items():
        if _ours_only(key):
            continue
        if key.startswith("schedules.") and (not cfg.schedules.enabled or value is None):
            continue  # the official code tests `"cosine_epochs" in section`: an absent key, not a null
        if OmegaConf.select(official_default, key, default=missing) is not missing or key.startswith("schedules."):
            out[key] = value
    return out


# ----------------------------------------------------------------------------------------------- parent: inputs


def make_inputs(spec: dict, n_batches: int, folder: Path) -> dict:
    """Save `n_batches` collated batches and the initial student state dict (our init, seed 0) into `folder`."""
    import torch
    from bench_train_step import collated_batches

    from dinov3_us.train.ssl_meta_arch import SSLMetaArch

    cfg = our_config(spec, "cpu")
    torch.manual_seed(0)
    model = SSLMetaArch(cfg)
    model.init_weights()
    torch.save({k: v.detach().clone() for k, v in model.student.state_dict().items()}, folder / "student.pt")
    del model
    batches = collated_batches(cfg, n_batches)  # the trainer's collate and masking, one batch per step
    torch.save(batches, folder / "batches.pt")
    return {"batch_size": cfg.train.batch_size_per_gpu}


# ----------------------------------------------------------------------------------------------- workers


def _peak_memory(device: str) -> dict:
    import torch

    out = {"peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
    if device == "cuda":
        out["cuda_max_allocated_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return out


def _timed(device: str, fn):
    import torch

    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, out


def run_ours(args, spec: dict, folder: Path) -> dict:
    """Our trainer's step (see `dinov3_us/train/trainer.py`) on the saved batches and weights."""
    import torch

    from dinov3_us.distributed import init_distributed
    from dinov3_us.fsdp import parallelize_meta_arch
    from dinov3_us.train.optimizer import build_adamw
    from dinov3_us.train.schedules import build_schedulers
    from dinov3_us.train.ssl_meta_arch import SSLMetaArch
    from dinov3_us.train.step import train_step

    cfg = our_config(spec, args.device)
    info = init_distributed(cfg.runtime.device, cfg.runtime.dist_backend)
    torch.manual_seed(cfg.train.seed)
    model = SSLMetaArch(cfg)
    model.init_weights()
    weights = torch.load(folder / "student.pt", weights_only=True)
    model.student.load_state_dict(weights, strict=True)
    model.teacher.load_state_dict(weights, strict=True)
    parallelize_meta_arch(model, cfg, info.device)
    model.train()
    optimizer = build_adamw(model.get_params_groups(), betas=(cfg.optim.adamw_beta1, cfg.optim.adamw_beta2))
    schedules = build_schedulers(cfg, info.world_size)
    batches = torch.load(folder / "batches.pt", weights_only=False)
    torch.manual_seed(0)
    seconds, losses = [], {}
    for it, batch in enumerate(batches):
        dt, metrics = _timed(args.device, lambda b=batch, i=it: train_step(model, optimizer, b, schedules, i,
                                                                           clip_grad=cfg.optim.clip_grad))
        seconds.append(dt)
        if it == 0:
            losses = {k: float(metrics[k]) for k in LOSS_KEYS}
    return {"seconds": seconds, "losses": losses, "compile": compile_info(bool(cfg.train.compile))}


def compile_info(requested: bool) -> dict:
    """Whether train.compile was set, and what dynamo did in this process (frames compiled, graphs)."""
    import torch._dynamo.utils as dynamo_utils

    frames = dynamo_utils.counters.get("frames", {})
    return {"requested": requested, "dynamo_frames_ok": int(frames.get("ok", 0)),
            "dynamo_frames_total": int(frames.get("total", 0)),
            "dynamo_unique_graphs": int(dynamo_utils.counters.get("stats", {}).get("unique_graphs", 0))}


class _StubMeta(type):
    """Metaclass of the inert torchvision classes: class attributes (`v2.InterpolationMode.BICUBIC`) are inert too."""

    def __getattr__(cls, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return _stub_class(name)


def _stub_class(name: str) -> type:
    """A class that accepts and ignores any arguments; calling an instance returns its arguments."""
    return _StubMeta(name, (), {"__init__": lambda self, *a, **k: None, "__call__": lambda self, *a, **k: a})


class _TorchvisionStub(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serves inert `torchvision.*` modules: any attribute is a class that accepts and ignores any arguments."""

    def find_spec(self, fullname, path, target=None):
        """A stub spec for `torchvision` and its submodules, None for anything else."""
        if fullname == "torchvision" or fullname.startswith("torchvision."):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        """A module whose missing attributes are inert classes."""
        module = types.ModuleType(spec.name)

        def getattr_(name: str):
            if name.startswith("__"):
                raise AttributeError(name)
            stub = _stub_class(name)
            setattr(module, name, stub)
            return stub

        module.__getattr__ = getattr_
        module.__path__ = []
        return module

    def exec_module(self, module):
        """Nothing to run."""


def adapt_official_runtime(repo: Path, device: str, t_arch: bool) -> list[str]:
    """Import the official package from `repo` with the run-time adaptations listed in the module docstring."""
    import torch
    from torch import nn

    done = []
    try:
        import torchvision  # noqa: F401
    except ImportError:
        sys.meta_path.insert(0, _TorchvisionStub())
        done.append("torchvision stub")
    sys.path.insert(0, str(repo))
    if device == "cpu":
        torch.Tensor.cuda = lambda self, *a, **k: self
        for name in ("synchronize", "empty_cache", "set_device", "manual_seed_all"):
            setattr(torch.cuda, name, lambda *a, **k: None)
        to_empty = nn.Module.to_empty

        def to_empty_cpu(self, *, device=None, recurse=True):
            device = "cpu" if device is not None and torch.device(device).type == "cuda" else device
            return to_empty(self, device=device, recurse=recurse)

        nn.Module.to_empty = to_empty_cpu
        done += ["Tensor.cuda -> identity", "torch.cuda.* no-ops", "to_empty(cuda) -> cpu"]
    import dinov3.distributed.torch_distributed_wrapper as wrapper
    import dinov3.fsdp.ac_compile_parallelize as acp
    import dinov3.models.vision_transformer as vits

    if device == "cpu":
        from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

        class CPUDeviceMesh:
            """`DeviceMesh.from_group(pg, "cuda")` as a CPU mesh."""

            @staticmethod
            def from_group(group, device_type, *a, **k):
                return DeviceMesh.from_group(group, "cpu", *a, **k)

        acp.init_device_mesh = lambda device_type, *a, **k: init_device_mesh("cpu", *a, **k)
        acp.DeviceMesh = CPUDeviceMesh
        done.append("device meshes on cpu")
    import torch.distributed as dist

    wrapper._DEFAULT_PROCESS_GROUP = dist.group.WORLD
    done.append("our 1-process group as its default group")
    if t_arch:
        name, dim, depth, heads = BENCH_T_ARCH

        def vit_bench_t(patch_size=16, **kwargs):
            return vits.DinoVisionTransformer(patch_size=patch_size, embed_dim=dim, depth=depth, num_heads=heads,
                                              ffn_ratio=4, **kwargs)

        setattr(vits, name, vit_bench_t)
        done.append(f"{name} constructor")
    return done


def run_official(args, spec: dict, folder: Path) -> dict:
    """The official training step (its `train.py` order, see the module docstring) on the saved inputs."""
    import torch

    from dinov3_us.distributed import init_distributed

    init_distributed(args.device, "nccl" if args.device == "cuda" else "gloo")
    t_arch = our_config(spec, args.device).student.arch == BENCH_T_ARCH[0]
    adaptations = adapt_official_runtime(Path(args.official_repo), args.device, t_arch)
    import torch.distributed as dist
    from dinov3.configs import apply_scaling_rules_to_cfg, get_default_config
    from dinov3.train.ssl_meta_arch import SSLMetaArch
    from dinov3.train.train import apply_optim_scheduler, build_optimizer, build_schedulers
    from omegaconf import OmegaConf
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
    from torch.distributed.tensor import DTensor

    cfg = get_default_config()
    for key, value in official_values(spec, cfg).items():
        OmegaConf.update(cfg, key, value, merge=False, force_add=key.startswith("schedules."))
    apply_scaling_rules_to_cfg(cfg)
    torch.manual_seed(cfg.train.seed)
    with torch.device("meta"):
        model = SSLMetaArch(cfg)
    model.prepare_for_distributed_training()
    fill_device = "cuda" if args.device == "cuda" else "cpu"
    model._apply(lambda t: torch.full_like(t, fill_value=math.nan if t.dtype.is_floating_point
                                           else 2 ** (t.dtype.itemsize * 8 - 1), device=fill_device), recurse=True)
    model.train()
    optimizer = build_optimizer(cfg, model.get_params_groups())
    lr_s, wd_s, mom_s, temp_s, last_s = build_schedulers(cfg)
    model.init_weights()
    weights = torch.load(folder / "student.pt", weights_only=True)
    options = StateDictOptions(full_state_dict=True, strict=True)
    set_model_state_dict(model.student, weights, options=options)
    set_model_state_dict(model.model_ema, weights, options=options)
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[cfg.compute_precision.param_dtype]
    batches = torch.load(folder / "batches.pt", weights_only=False)
    global_batch = cfg.train.batch_size_per_gpu * dist.get_world_size()
    for batch in batches:  # its collate casts the crops to the parameter dtype
        batch["collated_global_crops"] = batch["collated_global_crops"].to(dtype)
        batch["collated_local_crops"] = batch["collated_local_crops"].to(dtype)
        batch["global_batch_size"] = global_batch

    def step(data, it):
        apply_optim_scheduler(optimizer, lr_s[it], wd_s[it], last_s[it])
        optimizer.zero_grad(set_to_none=True)
        total, metrics = model.forward_backward(data, teacher_temp=temp_s[it], iteration=it)
        if cfg.optim.clip_grad:
            for name, module in model.student.items():
                norm = torch.nn.utils.clip_grad_norm_(module.parameters(), max_norm=cfg.optim.clip_grad)
                metrics[f"{name}_grad_norm"] = norm.full_tensor().item() if isinstance(norm, DTensor) else norm.item()
        all_ranks = total.new_empty(dist.get_world_size())  # [world]
        dist.all_gather_into_tensor(all_ranks, total.detach().reshape(1))  # gloo wants [1], not a 0-d tensor
        values = torch.stack([torch.as_tensor(v, dtype=torch.float32, device=total.device).detach()
                              for v in metrics.values()])  # [n_metrics]
        dist.all_reduce(values, op=dist.ReduceOp.AVG)
        if all_ranks.isnan().any():
            print(f"official: NaN loss at iteration {it}", file=sys.stderr)
        optimizer.step()
        model.update_ema(mom_s[it])
        return {"total_loss": float(all_ranks.mean())} | {k: float(v) for k, v in zip(metrics, values)}

    gc.disable()
    gc.collect()
    torch.manual_seed(0)
    seconds, losses = [], {}
    for it, batch in enumerate(batches):
        dt, metrics = _timed(args.device, lambda b=batch, i=it: step(b, i))
        seconds.append(dt)
        if it == 0:
            losses = {k: metrics[k] for k in LOSS_KEYS}
    gc.enable()
    return {"seconds": seconds, "losses": losses, "compile": compile_info(bool(cfg.train.compile)),
            "adaptations": adaptations}


def worker_main(args) -> int:
    """Run one side in this process and print its JSON result line."""
    import torch

    torch.set_num_threads(args.threads)
    spec = json.loads(args.spec)
    folder = Path(args.inputs)
    run = run_ours if args.worker == "ours" else run_official
    result = run(args, spec, folder)
    result |= {"side": args.worker, "warmup": args.warmup, "threads": torch.get_num_threads(),
               **_peak_memory(args.device)}
    print(RESULT_PREFIX + json.dumps(result), flush=True)
    with contextlib.suppress(Exception):
        from dinov3_us.distributed import destroy_distributed

        destroy_distributed()
    return 0


# ----------------------------------------------------------------------------------------------- parent


def check_official_repo(path: str | None) -> Path:
    """The official checkout at `path`.

    Raises:
        UsageError: no path, no `dinov3/train/ssl_meta_arch.py` under it, or omegaconf missing.
    """
    if not path:
        raise UsageError("--official-repo PATH is required for --side official/both (a facebookresearch/dinov3 "
                         "checkout)")
    repo = Path(path).expanduser().resolve()
    if not (repo / "dinov3" / "train" / "ssl_meta_arch.py").is_file():
        raise UsageError(f"--official-repo {path}: not a dinov3 checkout (no dinov3/train/ssl_meta_arch.py)")
    try:
        import omegaconf  # noqa: F401
    except ImportError:
        raise UsageError("the official code needs omegaconf, which is not installed in this environment") from None
    return repo


def official_commit(repo: Path | None) -> str:
    """`git rev-parse HEAD` of the official checkout, or "unknown"."""
    if repo is None:
        return "unknown"
    try:
        out = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=30)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"


def spawn(args, side: str, spec: dict, folder: Path, repo: Path | None) -> dict:
    """Run `--worker side` in a fresh interpreter and parse its result line."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", side, "--spec", json.dumps(spec),
           "--inputs", str(folder), "--warmup", str(args.warmup), "--steps", str(args.steps),
           "--threads", str(args.threads), "--device", args.device]
    if repo is not None:
        cmd += ["--official-repo", str(repo)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_PREFIX)]
    if proc.returncode != 0 or not lines:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-25:])
        raise RuntimeError(f"{side} worker failed (exit code {proc.returncode}):\n{tail}")
    result = json.loads(lines[-1][len(RESULT_PREFIX):])
    result["process_seconds"] = time.perf_counter() - start
    return result


def summarize(name: str, batch: int, runs: dict[str, list[dict]], warmup: int) -> dict:
    """Medians, min-max, img/s, memory and step-0 losses of each side, the ratio (overall and per round)
    and the loss check."""
    row = {"config": name, "batch_size": batch, "sides": {}}
    for side, results in runs.items():
        timed = [s for r in results for s in r["seconds"][warmup:]]
        median = statistics.median(timed)
        row["sides"][side] = {
            "median_s": median, "min_s": min(timed), "max_s": max(timed), "images_per_s": batch / median,
            "timed_steps": timed, "warmup_s": [r["seconds"][:warmup] for r in results],
            "peak_rss_gib": max(r["peak_rss_gib"] for r in results),
            "cuda_max_allocated_gib": max((r["cuda_max_allocated_gib"] for r in results
                                           if "cuda_max_allocated_gib" in r), default=None),
            "step0_losses": results[0]["losses"], "compile": results[0]["compile"],
            "adaptations": results[0].get("adaptations", []),
        }
    if {"ours", "official"} <= row["sides"].keys():
        ours, off = row["sides"]["ours"], row["sides"]["official"]
        row["ratio_ours_over_official"] = ours["images_per_s"] / off["images_per_s"]
        # each round's pair of processes ran back to back: the spread of these is the machine's noise
        row["ratio_per_round"] = [statistics.median(o["seconds"][warmup:]) / statistics.median(m["seconds"][warmup:])
                                  for m, o in zip(runs["ours"], runs["official"])]
        rel = {k: abs(ours["step0_losses"][k] - off["step0_losses"][k]) / max(abs(off["step0_losses"][k]), 1e-12)
               for k in LOSS_KEYS}
        row["step0_relative_difference"] = rel
        row["step0_losses_agree"] = all(v <= LOSS_RTOL for v in rel.values())
    return row


def print_row(row: dict) -> None:
    """The table lines of one config."""
    print(f"\n== {row['config']} (batch {row['batch_size']})")
    print(f"{'side':9} {'median s':>9} {'min-max s':>17} {'img/s':>8} {'RSS GiB':>8} {'CUDA GiB':>9} {'compile':>10}")
    for side, s in row["sides"].items():
        cuda = f"{s['cuda_max_allocated_gib']:.2f}" if s["cuda_max_allocated_gib"] is not None else "-"
        comp = s["compile"]
        comp_txt = "on" if comp["requested"] else "off"
        if "dynamo_frames_ok" in comp:
            comp_txt += f" ({comp['dynamo_frames_ok']}fr)"
        print(f"{side:9} {s['median_s']:9.3f} {s['min_s']:8.3f}-{s['max_s']:<8.3f} {s['images_per_s']:8.2f} "
              f"{s['peak_rss_gib']:8.2f} {cuda:>9} {comp_txt:>10}")
    if "ratio_ours_over_official" in row:
        rounds = ", ".join(f"{r:.2f}" for r in row["ratio_per_round"])
        print(f"ours/official img/s: {row['ratio_ours_over_official']:.3f} (per round: {rounds})")
    sides = list(row["sides"])
    print(f"{'step-0 loss':24}" + "".join(f"{s:>14}" for s in sides) + ("    rel.diff" if len(sides) == 2 else ""))
    for k in LOSS_KEYS:
        line = f"{k:24}" + "".join(f"{row['sides'][s]['step0_losses'][k]:14.6f}" for s in sides)
        if "step0_relative_difference" in row:
            d = row["step0_relative_difference"][k]
            line += f"  {d:10.2e}" + ("  <-- DIFFERS" if d > LOSS_RTOL else "")
        print(line)
    if row.get("step0_losses_agree") is False:
        print(f"WARNING: step-0 losses differ by more than {LOSS_RTOL:g} relative")
    for side, s in row["sides"].items():
        warm = ", ".join(f"{sum(w):.1f}" for w in s["warmup_s"])
        print(f"{side} warm-up seconds per round: {warm}")


def parse_args(argv=None):
    """Command-line arguments (parent and worker)."""
    import torch

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--official-repo", default=None, help="a facebookresearch/dinov3 checkout (has dinov3/)")
    parser.add_argument("--configs", nargs="*", default=["S-bf16", "S-fp32", "T"], choices=list(CONFIGS))
    parser.add_argument("--config", nargs="+", default=None, metavar="PATH [KEY=VALUE ...]",
                        help="one of our YAML training configs and dotlist overrides (run after --configs)")
    parser.add_argument("--side", choices=["ours", "official", "both"], default="both")
    parser.add_argument("--warmup", type=int, default=2, help="warm-up steps per process (>= 2)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per process")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds of (ours, official)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch.set_num_threads on both sides")
    parser.add_argument("--compile", choices=["on", "off"], default="on",
                        help="train.compile on both sides (on: the official default)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--output", default=str(REPO / "bench/results/vs_official.json"))
    parser.add_argument("--worker", choices=["ours", "official"], help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    parser.add_argument("--inputs", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.warmup < 2 or args.steps < 1 or args.rounds < 1:
        raise UsageError("--warmup must be >= 2, --steps and --rounds >= 1")
    return args


def main(argv=None) -> int:
    """Validate, make the inputs once per config, alternate the workers, print and write the report."""
    try:
        args = parse_args(argv)
        if args.worker:
            return worker_main(args)
        repo = check_official_repo(args.official_repo) if args.side in ("official", "both") else None
        compile_ = args.compile == "on"
        specs = [(name, {"path": CONFIGS[name][0], "overrides": CONFIGS[name][1], "compile": compile_})
                 for name in args.configs]
        if args.config:
            path = Path(args.config[0])
            if not path.is_file():
                raise UsageError(f"--config {path}: no such file")
            specs.append((path.stem, {"path": str(path), "overrides": args.config[1:], "compile": compile_}))
        if not specs:
            raise UsageError("nothing to run: give --configs and/or --config")
        from dinov3_us.errors import DinoUSError

        for name, spec in specs:
            try:
                our_config(spec, "cpu")
            except (DinoUSError, ValueError) as err:
                raise UsageError(f"config {name}: {err}") from None
        if repo is not None:
            from omegaconf import OmegaConf

            default = OmegaConf.load(repo / "dinov3/configs/ssl_default_config.yaml")
            for _, spec in specs:
                official_values(spec, default)
    except UsageError as err:
        print("error: " + " ".join(str(err).split()), file=sys.stderr)  # one line
        return 2
    sides = ["ours", "official"] if args.side == "both" else [args.side]
    rows = []
    for name, spec in specs:
        folder = Path(tempfile.mkdtemp(prefix="bench_vs_official_"))
        try:
            info = make_inputs(spec, args.warmup + args.steps, folder)
            runs: dict[str, list[dict]] = {side: [] for side in sides}
            for rnd in range(args.rounds):
                for side in sides:
                    result = spawn(args, side, spec, folder, repo)
                    print(f"[{name}] round {rnd + 1}/{args.rounds} {side}: "
                          f"{', '.join(f'{s:.2f}' for s in result['seconds'])} s "
                          f"(process {result['process_seconds']:.0f} s)", flush=True)
                    runs[side].append(result)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        row = summarize(name, info["batch_size"], runs, args.warmup)
        row["spec"] = spec
        rows.append(row)
        print_row(row)
    from stamp import stamp  # bench/ is this script's folder

    report = {"benchmark": "vs_official", "stamp": stamp(), "device": args.device, "threads": args.threads,
              "official_repo": str(repo) if repo else None, "official_commit": official_commit(repo),
              "compile": args.compile,
              "warmup": args.warmup, "steps": args.steps,
              "rounds": args.rounds, "results": rows}
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
