"""A training checkpoint's backbone as a weights file: the DCP checkpoint -> official, HF or timm format.

Streams tensor by tensor (`dinov3_us.checkpointer.export.iter_tensors`): each tensor is read from the
checkpoint alone (DCP without a process group), so peak memory is about the backbone's size, not the
checkpoint's (which also holds the student, the heads and the optimizer state). The keys are checked
against a `DinoVisionTransformer` built from the run's `config.yaml`: any mismatch is an error. A run
folder stands for the checkpoint `dinov3_us.weights.resolve.select_checkpoint` picks (auto: the best on its
downstream monitor where one is marked, else the newest complete one). The trainer writes its teacher files
from memory (`write_trained_teacher`: `OUT/teacher.pth` when it commits the checkpoint
`evaluation.teacher_checkpoint` picks, the periodic exports) and checks at the end of a completed run that
teacher.pth holds the chosen one (`write_run_teacher`, which reads it back from the shards where it does not).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch

from dinov3_us.checkpointer.export import iter_tensors
from dinov3_us.configs import load_config
from dinov3_us.errors import CheckpointError
from dinov3_us.fileio import ensure_writable_dir
from dinov3_us.models import vit_kwargs
from dinov3_us.models.vision_transformer import DinoVisionTransformer
from dinov3_us.run_dir import RunDir
from dinov3_us.weights.files import write_weights_file
from dinov3_us.weights.formats import HEAD_PREFIXES, export_backbone, link_backbone, save_backbone
from dinov3_us.weights.load import check_state_dict
from dinov3_us.weights.resolve import resolve_weights, select_checkpoint
from dinov3_us.weights.sidecar import teacher_iteration

logger = logging.getLogger("dinov3_us")

MODEL_PREFIX = "model.model."  # <state name "model">.<ModelOptimizerState's "model">.<fqn>
PARTS = {"teacher": "teacher.backbone.", "student": "student.backbone."}


def checkpoint_of(path: str | os.PathLike, select: str = "auto") -> Path:
    """The checkpoint folder `path` names or, for a run folder, the one `select` picks (`resolve_weights`);
    `CheckpointError` for a weights file (nothing to convert: re-export it) or a run without checkpoints."""
    found = resolve_weights(path, select)
    if found.checkpoint is None:
        raise CheckpointError(f"{found.path} holds no training checkpoint to convert" + (
            f" ({found.file} is a weights file: re-export it with --format and --output)" if found.file else ""))
    return found.checkpoint


def write_trained_teacher(run: RunDir, cfg, arch: dict, iteration: int, state: dict, *, best: dict | None = None,
                          teacher: bool = True, export: bool = False) -> None:
    """The teacher the trainer holds after `iteration` -> its files, written once, from memory.

    `state`: the consolidated teacher backbone of the model the trainer built from `cfg` (`arch`: its
    `DinoVisionTransformer` kwargs); `best`: the downstream monitor's best record (None: no monitor, or none yet).
    `teacher`: `OUT/teacher.pth` + `teacher.json` for the checkpoint `OUT/ckpt/<iteration>` the trainer has just
    committed, byte for byte what `convert_checkpoint` reads back from that checkpoint (the same tensors in the
    same order, the same sidecar). `export`: the periodic export `OUT/eval/training_<iteration>/teacher_checkpoint.pth`
    + `.json`; with `teacher` too it is a hard link of teacher.pth (`formats.link_backbone`), not a copy.
    """
    state = dict(sorted(state.items()))  # the order iter_tensors reads a checkpoint's tensors in: the same bytes
    if teacher:
        ckpt = run.ckpt / str(iteration)
        meta = card_meta(RunDir(run.root.resolve()), cfg, iteration, str(ckpt), "teacher", best)  # as converted
        export_backbone(state, arch, run.teacher, "official", meta=meta)
        logger.info("wrote the teacher of checkpoint %s from memory -> %s (%s)", ckpt, run.teacher,
                    meta.get("selected", f"iteration {iteration}"))
    if export:
        info = {"iteration": iteration, "source": str(run.root)}
        if teacher:
            link_backbone(run.teacher, run.export(iteration), arch, **info)
        else:
            save_backbone(state, run.export(iteration), arch, **info)


def write_run_teacher(run: RunDir, select: str = "auto") -> Path:
    """`run`'s teacher, from the checkpoint `select` picks, -> `OUT/teacher.pth` + `teacher.json` (atomic, as
    `convert_checkpoint` writes it), unless teacher.pth already holds that checkpoint.

    What a completed run checks at its end: the trainer wrote teacher.pth from memory when it committed the
    chosen checkpoint (`write_trained_teacher`); this reads it back from the checkpoint's shards only where that
    write did not happen (a crash between the two, or a run folder of an older version).

    Raises `CheckpointError` when the run has no checkpoint of that kind (`select="best"` without a best).
    """
    ckpt = select_checkpoint(run, select)
    if ckpt is None:
        raise CheckpointError(f"no {'best' if select == 'best' else 'complete'} checkpoint in {run.ckpt} for "
                              f"{run.teacher} (evaluation.teacher_checkpoint={select}): set "
                              "evaluation.teacher_checkpoint=latest, or convert one with tools/convert_checkpoint.py")
    if teacher_iteration(run.teacher) == int(ckpt.name):
        logger.info("%s already holds checkpoint %s", run.teacher, ckpt)
        return run.teacher
    return convert_checkpoint(ckpt, run.teacher)


def run_config_of(ckpt: Path):
    """The resolved config of the run that wrote `ckpt` (`OUT/config.yaml` for `OUT/ckpt/<it>`)."""
    path = RunDir.of_checkpoint(ckpt.resolve()).config
    if not path.is_file():
        raise CheckpointError(f"{path} not found: pass --config-file with the run's config")
    return path


def read_checkpoint_backbone(ckpt: str | os.PathLike, *, which: str = "teacher",
                             config_file: str | os.PathLike | None = None) -> tuple[dict, dict, dict]:
    """(state dict in the official layout, architecture kwargs, card metadata) of a checkpoint's `which` backbone.

    `ckpt` is a checkpoint folder (`checkpoint_of` resolves a run folder; an incomplete folder is refused by
    `iter_tensors`). The metadata (iteration, source, config, normalisation, the run's evaluation results)
    feeds the exports' cards.
    """
    ckpt = Path(ckpt)
    if which not in PARTS:
        raise CheckpointError(f"which={which!r}: expected one of {sorted(PARTS)}")
    cfg = load_config(config_file or run_config_of(ckpt))
    state = dict(iter_tensors(ckpt, MODEL_PREFIX + PARTS[which]))
    if not state:
        raise CheckpointError(f"{ckpt} holds no {which} backbone tensors (prefix {MODEL_PREFIX + PARTS[which]!r})")
    return checked_backbone(state, ckpt, cfg, which)


def checked_backbone(state: dict, ckpt: Path, cfg, which: str) -> tuple[dict, dict, dict]:
    """(state, architecture kwargs, card metadata) of checkpoint `ckpt`'s `which` backbone `state`, its keys and
    shapes checked against the architecture `cfg` trains (any mismatch: `CheckpointError`)."""
    arch = vit_kwargs(cfg.student, cfg.crops.global_crops_size)
    with torch.device("meta"):
        reference = DinoVisionTransformer(**arch)
    check_state_dict(state, reference, f"{which} backbone of {ckpt}")
    iteration = int(ckpt.name) if ckpt.name.isdigit() else None
    run = RunDir.of_checkpoint(ckpt.resolve())
    best = run.best()
    return state, arch, card_meta(run, cfg, iteration, str(ckpt), which, None if best is None else best[1])


def card_meta(run: RunDir, cfg, iteration: int | None, source: str, which: str, best: dict | None) -> dict:
    """What an export's model card says: run, data pool, recipe, iterations, normalisation, evaluation results.

    `best`: the run's best record on the downstream monitor (`OUT/ckpt/best.json`: iteration, metric, score,
    random, split), or None."""
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
    selected = None
    if best is not None and iteration is not None and int(best["iteration"]) == iteration:
        selected = (f"the best checkpoint on the downstream monitor ({best.get('metric')} {best.get('score', 0):.3f}, "
                    f"random init {best.get('random', float('nan')):.3f}, on {best.get('split')})")
    elif iteration is not None and iteration == total - 1:
        selected = "the final checkpoint" + ("" if best else " (no best checkpoint on the downstream monitor)")
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

    `ckpt` is a checkpoint folder or a run folder (the checkpoint `select_checkpoint` picks). `official`: a `.pth`
    or `.safetensors` + `<stem>.json`; `hf` / `timm`: see `dinov3_us.weights.formats`. With `heads`, the DINO
    and iBOT heads are written beside it as `<stem>_heads.pth`.
    """
    ensure_writable_dir(Path(output).parent, "--output")
    ckpt = checkpoint_of(ckpt)
    state, arch, meta = read_checkpoint_backbone(ckpt, which=which, config_file=config_file)
    out, how = export_backbone(state, arch, output, fmt, meta=meta)
    logger.info("load it with: %s", how)
    if heads:
        head_prefix = MODEL_PREFIX + which + "."
        head_state = {k: v for k, v in iter_tensors(ckpt, head_prefix) if k.startswith(HEAD_PREFIXES)}
        write_weights_file(head_state, Path(output).with_name(Path(output).stem + "_heads.pth"))
    logger.info("converted %s (%s backbone, %d tensors) -> %s (%s)", ckpt, which, len(state), out, fmt)
    return out
