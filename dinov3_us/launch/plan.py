"""Everything decided before submission: the checks (nothing is submitted when one fails) and the job chain.

Checks: the config file exists and validates (an unknown key is an error with a suggestion), the
pretraining shards and any pretrained weights exist, the output folder does not hold a run with a
different config (unless `--resume`), no job of an earlier launch into it is still queued, G is not
more than the partition's GPUs per node, and every evaluation config validates and names readable
labelled shards. Then the chain: pretrain (it writes OUT/teacher.pth) -> one job per evaluation (afterok).
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from dinov3_us.configs import Config, load_config
from dinov3_us.configs.config import config_differences
from dinov3_us.data.shards import load_manifest, parse_dir_spec, resolve_shards
from dinov3_us.errors import DinoUSError
from dinov3_us.eval.protocols import PROTOCOLS
from dinov3_us.launch.cluster import LaunchError, Resources, partition_gpus, resolve_cluster
from dinov3_us.launch.jobs import JOBS_FILE, TERMINAL_STATES, JobsFile, refresh
from dinov3_us.launch.stages import EvalJob, PretrainJob, StageJob
from dinov3_us.run_dir import RunDir
from dinov3_us.train.trainer import split_dataset_path
from dinov3_us.weights.sidecar import sidecar_arch, sidecar_path

DEFAULT_EVAL_TASKS = ("linear", "knn")
LABELLED_SPLITS = ("train", "val", "test")


@dataclass
class JobSpec:
    """One job of the chain: its callable, resources and dependencies."""

    name: str
    kind: str  # pretrain | convert (submit_eval.py) | eval
    task: StageJob
    resources: Resources
    depends_on: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    results: str | None = None  # evaluations: their results.json


@dataclass
class EvalRequest:
    """An evaluation to run: task and optional evaluation YAML."""

    name: str
    task: str
    config_file: str | None = None


def add_eval_args(parser: argparse.ArgumentParser, default_data: str = "the pretraining shards") -> None:
    """--eval-config / --eval-override; `default_data` names where the default evaluations' splits come from."""
    g = parser.add_argument_group("evaluation")
    g.add_argument("--eval-config", nargs="+", action="extend", metavar="EVALCFG", default=None,
                   help="evaluations to run, one job each: TASK (linear, knn, finetune, segmentation), "
                        "TASK=YAML, or YAML (= linear and knn with it). Default: linear and knn on the "
                        f"labelled train/val/test splits of {default_data}")
    g.add_argument("--eval-override", action="append", default=[], metavar="KEY=VALUE",
                   help="an evaluation config override for every evaluation job, e.g. linear.epochs=20 "
                        "(repeatable)")


def parse_eval_requests(entries: list[str] | None) -> list[EvalRequest]:
    """`--eval-config` entries -> named evaluation requests (names unique)."""
    requests: list[EvalRequest] = []
    for entry in entries or list(DEFAULT_EVAL_TASKS):
        task, sep, path = entry.partition("=")
        if sep:
            if task not in PROTOCOLS:
                raise LaunchError(f"--eval-config {entry}: unknown task {task!r}; expected one of "
                                  f"{', '.join(PROTOCOLS)}")
            pairs = [(task, path)]
        elif entry in PROTOCOLS:
            pairs = [(entry, None)]
        else:
            pairs = [(t, entry) for t in DEFAULT_EVAL_TASKS]
        for task, path in pairs:
            if path is not None and not Path(path).is_file():
                raise LaunchError(f"--eval-config {entry}: {path} is neither a task ({', '.join(PROTOCOLS)}) nor "
                                  "an existing evaluation YAML")
            name = task if path is None else f"{task}_{Path(path).stem}"
            base, k = name, 2
            while any(r.name == name for r in requests):
                name, k = f"{base}_{k}", k + 1
            requests.append(EvalRequest(name, task, str(Path(path).resolve()) if path else None))
    return requests


def _override_keys(overrides: list[str]) -> set[str]:
    return {o.partition("=")[0].strip() for o in overrides}


def labelled_shards(dataset_path: str, eval_overrides: list[str]) -> str | None:
    """The first curated folder of `dataset_path` with train/val/test splits that carry labels, else None.

    A folder without class labels (HC18) counts when the overrides choose another target
    (`data.label_key=head_circumference_mm data.label_bins=3`).
    """
    for spec in split_dataset_path(dataset_path):
        parsed = parse_dir_spec(spec)
        if parsed is None:
            continue
        folder = parsed[0]
        try:
            manifest = load_manifest(folder)
        except DinoUSError:
            continue
        if not set(LABELLED_SPLITS) <= set(manifest.get("shards", {})):
            continue
        if manifest.get("labels") or "data.label_key" in _override_keys(eval_overrides):
            return folder
    return None


def _check_specs(specs: list[str], what: str) -> None:
    for spec in specs:
        try:
            shards = resolve_shards(spec)
        except DinoUSError as err:
            raise LaunchError(f"{what}: {err}") from None
        if not shards or sum(s.n for s in shards) == 0:
            raise LaunchError(f"{what}: {spec} holds no samples")


def plan_evals(requests: list[EvalRequest], weights: Path, launch: RunDir, cwd: str, default_data: str | None,
               overrides: list[str], model_info: dict | None) -> list[JobSpec]:
    """Validate each evaluation (config, datasets) and build its job (resources are set by the caller).

    Evaluations without a YAML use `default_data`'s train/val/test splits at the backbone's training
    resolution (`model_info['img_size']`), with `linear.n_last_blocks` clipped to its depth, unless the
    overrides say otherwise. Every frozen-feature evaluation also scores a random initialisation of the
    same architecture (`report.baseline=random`, paired difference and chance level in its report).
    """
    from dinov3_us.eval.config import LinearConfig, load_eval_config
    from dinov3_us.eval.defaults import clip_n_last_blocks

    specs = []
    keys = _override_keys(overrides)
    for req in requests:
        extra: list[str] = []
        if req.config_file is None and model_info:
            if "data.image_size" not in keys and model_info.get("img_size"):
                extra.append(f"data.image_size={model_info['img_size']}")
            depth = model_info.get("depth")
            default = LinearConfig().n_last_blocks
            if req.task == "linear" and "linear.n_last_blocks" not in keys and depth:
                clipped = clip_n_last_blocks(default, depth)  # the rule the evaluation applies itself
                if clipped != default:
                    extra.append(f"linear.n_last_blocks={clipped}".replace(" ", ""))
        if req.task != "finetune" and "report.baseline" not in keys:  # frozen features: the baseline is cheap
            extra.append("report.baseline=random")
        all_overrides = [*extra, *overrides]
        where = f"evaluation {req.name}" + (f" ({req.config_file})" if req.config_file else "")
        try:
            cfg = load_eval_config(req.config_file, None, all_overrides)
        except DinoUSError as err:
            raise LaunchError(f"{where}: {err}") from None
        flags: dict = {}
        if cfg.data.train_dataset:
            specs_to_check = [cfg.data.train_dataset, *([cfg.data.val_dataset] if cfg.data.val_dataset else []),
                              *cfg.data.test_datasets]
        else:
            if default_data is None:
                raise LaunchError(f"{where}: no datasets: give data.train_dataset/val_dataset/test_datasets in an "
                                  "evaluation YAML (--eval-config), labelled pretraining shards, or --no-eval")
            specs_to_check = [f"{default_data}:{s}" for s in LABELLED_SPLITS]
            flags = {"data.train_dataset": specs_to_check[0], "data.val_dataset": specs_to_check[1],
                     "data.test_datasets": [specs_to_check[2]]}
        _check_specs(specs_to_check, where)
        flags |= {"model.pretrained_weights": str(weights), "features.progress": False}
        job = EvalJob(req.name, launch, cwd, req.task, req.config_file, flags, all_overrides)
        specs.append(JobSpec(req.name, "eval", job, Resources(), [], [str(job.out_dir)],
                             results=str(job.out_dir / "results.json")))
    return specs


def load_pretrain_config(config_file: str | None, overrides: list[str]) -> Config:
    """Resolve and check the pretraining config, its shards and initial weights."""
    if config_file is not None and not Path(config_file).is_file():
        raise LaunchError(f"--config-file {config_file}: no such file")
    cfg = load_config(config_file, overrides)
    _check_specs(split_dataset_path(cfg.train.dataset_path), "train.dataset_path")
    weights = cfg.student.pretrained_weights
    if weights and "://" not in weights and not Path(weights).is_file():
        raise LaunchError(f"student.pretrained_weights: {weights} does not exist")
    return cfg


def check_output_dir(out: Path, cfg: Config, resume: bool) -> str | None:
    """Refuse an output folder holding a run with another config unless `resume`; returns a note or None."""
    path = out / "config.yaml"
    if not path.is_file():
        return None
    try:
        old = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise LaunchError(f"{path} is not valid YAML ({err}); use another --output-dir") from None
    diffs = config_differences(old if isinstance(old, dict) else {}, cfg.to_dict())
    if diffs and not resume:
        shown = "\n  ".join(diffs[:12]) + ("\n  ..." if len(diffs) > 12 else "")
        raise LaunchError(f"{out} holds a run with a different config ({len(diffs)} keys differ):\n  {shown}\n"
                          "Use another --output-dir, or --resume to continue that run with this config.")
    if diffs:
        return f"--resume: continuing the run in {out} with {len(diffs)} changed key(s): {'; '.join(diffs[:5])}"
    return f"{out} holds a run with this config: pretraining resumes from its latest checkpoint, if any"


def check_previous_jobs(out: Path) -> None:
    """Refuse to launch into a folder whose earlier SLURM launch still has queued or running jobs."""
    jobs_file = JobsFile(out / JOBS_FILE)
    if not jobs_file.exists():
        return
    try:
        data = jobs_file.read()
    except (OSError, ValueError):
        return
    if data.get("cluster") != "slurm":
        return
    data = refresh(jobs_file)
    active = {n: r for n, r in data["jobs"].items() if r.get("job_id") and r.get("state") not in TERMINAL_STATES}
    if active:
        ids = " ".join(str(r["job_id"]) for r in active.values())
        listing = ", ".join(f"{n} {r['job_id']} {r.get('state')}" for n, r in active.items())
        raise LaunchError(f"{out}: jobs of an earlier launch are still queued or running ({listing}); "
                          f"wait for them (python launchers/status.py {out} --wait) or cancel them (scancel {ids})")


def uses_gpus(cluster: str, device: str) -> bool:
    """Whether the jobs run on GPUs: runtime.device cuda, or auto where GPUs exist."""
    if device == "cpu" or cluster == "debug":
        return device == "cuda"
    if cluster == "slurm":
        return True  # auto: the partition's GPUs (checked against G)
    import torch

    return torch.cuda.is_available()


def main_resources(cluster: str, device: str, nodes: int, gpus_per_node: int | None, timeout_min: int,
                   partition: str | None, dry_run: bool) -> tuple[Resources, bool, list[str]]:
    """(resources of the pretraining job, GPUs?, notes) for a cluster and `runtime.device`."""
    notes = []
    gpu = uses_gpus(cluster, device)
    if cluster == "slurm":
        if dry_run and not _sinfo_available():
            notes.append("partition GPUs not checked (no sinfo here)")
            return Resources(nodes, gpus_per_node or 1, (gpus_per_node or 1) if gpu else 0, timeout_min), gpu, notes
        name, available = partition_gpus(partition)
        if gpu:
            if available == 0:
                raise LaunchError(f"partition {name} has no GPUs (runtime.device={device}); choose a GPU "
                                  "--partition, or set runtime.device=cpu to run CPU processes")
            g = gpus_per_node or available
            if g > available:
                raise LaunchError(f"--gpus-per-node {g} is more than partition {name} has: its nodes have at "
                                  f"most {available} GPUs; use --gpus-per-node {available} or another --partition")
            return Resources(nodes, g, g, timeout_min), True, notes
        return Resources(nodes, gpus_per_node or 1, 0, timeout_min), False, notes
    if cluster == "debug":
        if nodes * (gpus_per_node or 1) > 1:
            notes.append("--cluster debug runs a single process in this one: --nodes/--gpus-per-node ignored")
        return Resources(1, 1, int(gpu), timeout_min), gpu, notes
    if device == "cuda" and not gpu:
        raise LaunchError("runtime.device=cuda, but this machine has no CUDA GPU; set runtime.device=cpu")
    if gpu:
        import torch

        n = torch.cuda.device_count()
        if gpus_per_node or nodes > 1:
            notes.append(f"local run: using this machine's {n} GPU(s), one process each")
        return Resources(1, n, n, timeout_min), True, notes
    n = nodes * (gpus_per_node or 1)
    if nodes > 1:
        notes.append(f"local run: {nodes} nodes x {gpus_per_node or 1} = {n} CPU processes on this machine")
    return Resources(1, n, 0, timeout_min), False, notes


def _sinfo_available() -> bool:
    import shutil

    return shutil.which("sinfo") is not None


def pretrain_chain(cfg_file: str | None, overrides: list[str], run: RunDir, cwd: str, main: Resources,
                   side: Resources, evals: list[JobSpec], allow_config_change: bool = False) -> list[JobSpec]:
    """pretrain (which writes OUT/teacher.pth at its end, `evaluation.teacher_checkpoint`) -> evaluations."""
    config = str(Path(cfg_file).resolve()) if cfg_file else None
    jobs = [
        JobSpec("pretrain", "pretrain",
                PretrainJob("pretrain", run, cwd, config, list(overrides), allow_config_change), main, [],
                [str(run.ckpt), str(run.metrics), str(run.log), str(run.teacher), str(sidecar_path(run.teacher))]),
    ]
    for spec in evals:
        spec.resources = side
        spec.depends_on = ["pretrain"]
        jobs.append(spec)
    return jobs


def model_info_from_teacher(weights: Path) -> dict | None:
    """{'depth', 'img_size'} from the sidecar written beside an exported/converted teacher, or None without one
    (a sidecar that cannot be read: `CheckpointError`, see `dinov3_us.weights.sidecar`)."""
    arch = sidecar_arch(weights)
    if arch is None or not {"depth", "img_size"} <= set(arch):
        return None
    return {"depth": int(arch["depth"]), "img_size": int(arch["img_size"])}


def model_info_from_config(cfg: Config) -> dict:
    """{'depth', 'img_size'} of the backbone a pretraining config trains."""
    from dinov3_us.models import ARCHS

    return {"depth": ARCHS[cfg.student.arch][1], "img_size": cfg.crops.global_crops_size}


def launch_cluster(args: argparse.Namespace) -> tuple[str, list[str]]:
    """(cluster, notes) of `--cluster` (a SLURM dry run does not need the controller), and a set MASTER_PORT."""
    notes = []
    if port := os.environ.get("MASTER_PORT"):
        notes.append(f"MASTER_PORT={port} is set here: every job's ranks rendezvous on that port (unset it and they "
                     "meet on a port of the kernel's choosing)")
    if args.dry_run and args.cluster == "slurm":
        return "slurm", notes
    cluster, note = resolve_cluster(args.cluster)
    return cluster, [*([note] if note else []), *notes]


def launch_resources(args: argparse.Namespace, cluster: str, out: Path, device: str,
                     nodes: int) -> tuple[Resources, bool, list[str]]:
    """Refuse a folder whose earlier SLURM launch is still live; (main job's resources, GPUs?, notes)."""
    if cluster == "slurm" and not args.dry_run:
        check_previous_jobs(out)
    return main_resources(cluster, device, nodes, args.gpus_per_node, args.timeout, args.partition, args.dry_run)
