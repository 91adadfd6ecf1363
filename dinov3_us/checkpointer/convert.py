"""Un-shard a DCP training checkpoint into a consolidated backbone in the official DINOv3 key format.

Streams tensor by tensor: each tensor is read from the checkpoint alone (DCP without a process group),
so peak memory is about the backbone's size, not the checkpoint's (which also holds the student, the
heads and the optimizer state). The keys are checked against a `DinoVisionTransformer` built from the
run's `config.yaml`: any mismatch is an error. A run folder stands for its newest complete checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.metadata import TensorStorageMetadata

from dinov3_us.checkpointer.checkpointer import MARKER, checkpoint_folders, damaged_files, invalid_reason
from dinov3_us.configs import load_config
from dinov3_us.errors import CheckpointError
from dinov3_us.fileio import atomic_path, ensure_writable_dir
from dinov3_us.models import vit_kwargs
from dinov3_us.models.vision_transformer import DinoVisionTransformer
from dinov3_us.models.weights import check_state_dict
from dinov3_us.run_dir import RunDir

logger = logging.getLogger("dinov3_us")

MODEL_PREFIX = "model.model."  # <state name "model">.<ModelOptimizerState's "model">.<fqn>
PARTS = {"teacher": "teacher.backbone.", "student": "student.backbone."}


def _tensor_keys(ckpt: Path) -> dict[str, TensorStorageMetadata]:
    metadata = FileSystemReader(str(ckpt)).read_metadata()
    return {k: v for k, v in metadata.state_dict_metadata.items() if isinstance(v, TensorStorageMetadata)}


def iter_tensors(ckpt: str | os.PathLike, prefix: str) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (key without `prefix`, tensor) for every checkpoint tensor under `prefix`, one read at a time."""
    ckpt = Path(ckpt)
    reason = invalid_reason(ckpt)
    if reason:
        raise CheckpointError(f"{ckpt} is not a complete checkpoint: {reason}")
    damaged = damaged_files(ckpt)
    if damaged:
        raise CheckpointError(f"{ckpt} is damaged: {', '.join(damaged)} do not match the CRC-32 in its COMPLETE.json")
    reader = FileSystemReader(str(ckpt))
    for key, meta in sorted(_tensor_keys(ckpt).items()):
        if not key.startswith(prefix):
            continue
        tensor = torch.empty(meta.size, dtype=meta.properties.dtype)
        with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
            dcp.load({key: tensor}, storage_reader=reader, no_dist=True)
        yield key[len(prefix):], tensor


SELECT = ("latest", "best")  # which checkpoint of a run folder


def resolve_checkpoint(path: str | os.PathLike, select: str = "latest") -> Path:
    """The checkpoint folder `path` names: itself (`OUT/ckpt/<it>`), or of a run folder `OUT`, its newest complete
    checkpoint (`select="latest"`) or the best on its downstream monitor (`select="best"`, `OUT/ckpt/best.json`).

    Raises `CheckpointError` for a run without such a checkpoint and for a checkpoint folder that does not
    exist (naming the ones that do). Incomplete folders are left to `iter_tensors` to refuse.
    """
    if select not in SELECT:
        raise CheckpointError(f"checkpoint selection {select!r}: expected one of {', '.join(SELECT)}")
    path = Path(path)
    run = RunDir(path)
    if path.is_dir() and not (path / MARKER).exists() and (run.ckpt.is_dir() or run.config.is_file()):
        if select == "best":
            best = run.best()
            if best is None:
                raise CheckpointError(f"{path} has no best checkpoint ({run.ckpt / 'best.json'}: the run had no "
                                      "downstream monitor, or none scored yet); use its latest checkpoint")
            logger.info("%s is a run folder: converting its best checkpoint %s (%s %.4f)", path, best[0],
                        best[1].get("metric"), best[1].get("score", float("nan")))
            return best[0]
        latest = run.latest()
        if latest is None:
            raise CheckpointError(f"{path} is a run folder without a complete checkpoint in {run.ckpt}")
        logger.info("%s is a run folder: converting its latest complete checkpoint %s", path, latest)
        return latest
    if select == "best":
        raise CheckpointError(f"{path}: choosing the best checkpoint needs a run folder, not a checkpoint")
    if not path.exists():
        folders = checkpoint_folders(path.parent)
        complete = [p.name for _, p in folders if invalid_reason(p) is None]
        incomplete = [p.name for _, p in folders if p.name not in complete]
        available = ", ".join(complete) or "none"
        available += f" (incomplete: {', '.join(incomplete)})" if incomplete else ""
        raise CheckpointError(f"no such checkpoint {path}; available: {available}")
    return path


def run_config_of(ckpt: Path):
    """The resolved config of the run that wrote `ckpt` (`OUT/config.yaml` for `OUT/ckpt/<it>`)."""
    path = RunDir.of_checkpoint(ckpt.resolve()).config
    if not path.is_file():
        raise CheckpointError(f"{path} not found: pass --config-file with the run's config")
    return path


def read_checkpoint_backbone(ckpt: str | os.PathLike, *, which: str = "teacher",
                             config_file: str | os.PathLike | None = None) -> tuple[dict, dict, dict]:
    """(state dict in the official layout, architecture kwargs, card metadata) of a checkpoint's `which` backbone.

    `ckpt` is a checkpoint folder or a run folder (its newest complete checkpoint). The metadata
    (iteration, source, config, normalisation, the run's evaluation results) feeds the exports' cards.
    """
    ckpt = resolve_checkpoint(ckpt)
    if which not in PARTS:
        raise CheckpointError(f"which={which!r}: expected one of {sorted(PARTS)}")
    cfg = load_config(config_file or run_config_of(ckpt))
    arch = vit_kwargs(cfg.student, cfg.crops.global_crops_size)
    state = dict(iter_tensors(ckpt, MODEL_PREFIX + PARTS[which]))
    if not state:
        raise CheckpointError(f"{ckpt} holds no {which} backbone tensors (prefix {MODEL_PREFIX + PARTS[which]!r})")
    with torch.device("meta"):
        reference = DinoVisionTransformer(**arch)
    check_state_dict(state, reference, f"{which} backbone of {ckpt}")
    iteration = int(ckpt.name) if ckpt.name.isdigit() else None
    return state, arch, card_meta(RunDir.of_checkpoint(ckpt.resolve()), cfg, iteration, str(ckpt), which)


def card_meta(run: RunDir, cfg, iteration: int | None, source: str, which: str) -> dict:
    """What an export's model card says: run, data pool, recipe, iterations, normalisation, evaluation results."""
    gray = cfg.student.in_chans == 1
    results = {}
    for path in sorted(run.root.glob("eval/*/results.json")):
        try:
            data = json.loads(path.read_text())
            results[path.parent.name] = {"task": data.get("task"), **{k: v for k, v in data.get("metrics", {}).items()
                                                                      if isinstance(v, (int, float))}}
        except (OSError, ValueError, AttributeError):
            continue
    total = cfg.optim.epochs * cfg.train.OFFICIAL_EPOCH_LENGTH
    best = run.best()
    selected = None
    if best is not None and iteration is not None and int(best[1]["iteration"]) == iteration:
        b = best[1]
        selected = (f"the best checkpoint on the downstream monitor ({b.get('metric')} {b.get('score', 0):.3f}, "
                    f"random init {b.get('random', float('nan')):.3f}, on {b.get('split')})")
    return {"iteration": iteration, "source": source, "which": which, "run": str(run.root),
            **({"selected": selected} if selected else {}),
            "data": f"`{cfg.train.dataset_path}`", "recipe": f"the resolved config in {run.config}",
            "iterations": f"{(iteration or 0) + 1} of {total} (checkpoint {source})",
            "arch_name": cfg.student.arch, "in_chans": cfg.student.in_chans,
            "image_mean": [cfg.augment.gray_mean] if gray else list(cfg.crops.rgb_mean),
            "image_std": [cfg.augment.gray_std] if gray else list(cfg.crops.rgb_std), "results": results}


def convert_checkpoint(ckpt: str | os.PathLike, output: str | os.PathLike, *, which: str = "teacher",
                       config_file: str | os.PathLike | None = None, heads: bool = False,
                       fmt: str = "official") -> Path:
    """Write the `which` (teacher|student) backbone of `ckpt` to `output` in `fmt` (official, hf, timm).

    `ckpt` is a checkpoint folder or a run folder (its newest complete checkpoint). `official`: a `.pth`
    or `.safetensors` + `<stem>.json`; `hf` / `timm`: see `dinov3_us.interop`. With `heads`, the DINO
    and iBOT heads are written beside it as `<stem>_heads.pth`.
    """
    from dinov3_us.interop import export_backbone

    ensure_writable_dir(Path(output).parent, "--output")
    ckpt = resolve_checkpoint(ckpt)
    state, arch, meta = read_checkpoint_backbone(ckpt, which=which, config_file=config_file)
    out, how = export_backbone(state, arch, output, fmt, meta=meta)
    logger.info("load it with: %s", how)
    if heads:
        head_prefix = MODEL_PREFIX + which + "."
        head_state = {k: v for k, v in iter_tensors(ckpt, head_prefix) if k.startswith(("dino_head.", "ibot_head."))}
        with atomic_path(Path(output).with_name(Path(output).stem + "_heads.pth")) as tmp:
            torch.save(head_state, tmp)
    logger.info("converted %s (%s backbone, %d tensors) -> %s (%s)", ckpt, which, len(state), out, fmt)
    return out
