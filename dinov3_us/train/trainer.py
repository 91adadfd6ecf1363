"""The pretraining loop: build -> shard -> resume -> step, log, checkpoint, export -> teacher.pth -> close.

`pretrain(cfg, run_dir)` is the stage's entry point (`tools/train.py` and the launchers' pretraining
job call it, through `dinov3_us.launch.cli_train.train`). Order of construction in `Trainer`: the resolved
config is written, then the model (identical init on every rank from `train.seed`) and its initial
weights, FSDP2 sharding, the optimizer (after sharding), schedules, the data loader, then the checkpoint
manager and the watches; the process group exists before (`pretrain` starts it). `run()` resumes from the latest
complete checkpoint by itself and, on SIGUSR1/SIGUSR2/SIGTERM, checkpoints and returns
`REQUEUE_EXIT_CODE`. `OUT/teacher.pth` (+ `teacher.json`) is written from memory when the checkpoint
`evaluation.teacher_checkpoint` picks is committed: at each new best of the downstream monitor (auto, best), or
at the last iteration (latest, or no monitor); a completed run checks it at its end (`Trainer.write_teacher`).

The stages after training are passed in, not imported (a later stage imports an earlier one, never the
reverse: `dinov3_us/__init__.py`): `pretrain(..., monitor=, report=)` takes the downstream monitor's
factory and the run report's writer, which the entry points take from `dinov3_us.eval`
(`dinov3_us.launch.cli_train.train`: `DownstreamMonitor.build` and `write_run_report`); None leaves them off.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import yaml

from dinov3_us.checkpointer import (
    CheckpointManager,
    ModelOptimizerState,
    NoUsableCheckpointError,
    RNGState,
    TrainState,
    invalid_reason,
)
from dinov3_us.checkpointer.export import full_state_dict
from dinov3_us.configs import Config, write_config
from dinov3_us.configs.config import config_differences
from dinov3_us.data.loader import make_data_loader
from dinov3_us.data.pipeline import build_collate_fn, build_ssl_transform
from dinov3_us.data.shards import split_specs
from dinov3_us.distributed import DistInfo, all_gather_object, all_reduce_max, destroy_distributed, init_distributed
from dinov3_us.errors import CheckpointError, ConfigError, DinoUSError
from dinov3_us.fileio import ensure_writable_dir
from dinov3_us.fsdp import compile_problem, parallelize_meta_arch
from dinov3_us.log import setup_logging
from dinov3_us.models import vit_kwargs
from dinov3_us.run_dir import RunDir, training_lock
from dinov3_us.train.flops import peak_tflops, training_flops_per_image
from dinov3_us.train.metric_logger import MetricLogger
from dinov3_us.train.monitor import CollapseWatch, SelfDistillationWatch
from dinov3_us.train.optimizer import build_adamw
from dinov3_us.train.schedules import build_schedulers
from dinov3_us.train.signals import REQUEUE_EXIT_CODE, PreemptionFlag
from dinov3_us.train.ssl_meta_arch import SSLMetaArch
from dinov3_us.train.step import train_step
from dinov3_us.train.teacher_temp import TeacherTempController
from dinov3_us.weights.checkpoint import write_run_teacher, write_trained_teacher
from dinov3_us.weights.load import load_backbone_weights

logger = logging.getLogger("dinov3_us")


class NonFiniteLossError(DinoUSError, RuntimeError):
    """Too many consecutive steps with a non-finite loss."""


# (cfg, dist_info, total_iterations) -> a downstream monitor or None; the monitor has `start()`, `due(it)`,
# `score(backbone, it) -> metrics`, `update_best(it, metrics) -> bool`, `best`, `summary()`, `seconds_total`
# (`dinov3_us.eval.downstream.DownstreamMonitor.build` is the one there is).
MonitorFactory = Callable[[Config, DistInfo, int], Any]
# run folder -> None: writes the run report at the end (`dinov3_us.eval.run_report.write_run_report`).
ReportWriter = Callable[[RunDir], Any]


def pretrain(cfg: Config, run_dir: str | Path, *, allow_config_change: bool = False, start_over: bool = False,
             monitor: MonitorFactory | None = None, report: ReportWriter | None = None) -> int:
    """Train `cfg` into `run_dir` (resuming from its latest checkpoint); 0, or `REQUEUE_EXIT_CODE` when preempted.

    Starts the process group (torchrun, srun, a submitit job or one plain process), refuses a folder
    that another training holds or whose config differs (unless `allow_config_change`), takes the
    folder's lock (rank 0), logs to `run_dir/log.txt` (rank 0) and destroys the group at the end.
    Preemption signals (USR1/USR2/TERM) are caught from the start: one during start-up stops the run
    before its first step, with `REQUEUE_EXIT_CODE`. With `start_over`, checkpoints that cannot be used
    are moved aside (`ckpt/unusable-<time>/`) instead of stopping the run. `monitor` builds the
    downstream monitor from the config (None: no monitor, whatever the config says); `report` writes
    the run report after the last step on rank 0 (None: no report).

    Raises:
        DinoUSError: a user error (bad config, data or weights, a busy or foreign run folder,
            checkpoints that exist but cannot be used).
    """
    run = RunDir(run_dir)
    ensure_writable_dir(run.root, "--output-dir")  # a read-only or foreign folder: one line, before any work
    flag = PreemptionFlag().install()
    try:
        info = init_distributed(cfg.runtime.device, cfg.runtime.dist_backend, rendezvous_dir=run.root,
                                start_timeout_s=cfg.runtime.start_timeout_s)
        if cfg.train.compile and (problem := compile_problem(info.device)):
            raise ConfigError(problem)  # before any file is written, not a traceback at the first step
        check_run_config(run, cfg, allow_config_change)
        with contextlib.ExitStack() as stack:
            busy = None
            if info.is_main:
                try:
                    stack.enter_context(training_lock(run))
                except ConfigError as err:
                    busy = str(err)
            busy = next((b for b in all_gather_object(busy) if b), None)
            if busy:
                raise ConfigError(busy)
            setup_logging(run.root, info.rank)
            logger.info("process group: %d rank(s), %s on %s, rendezvous %s", info.world_size, info.backend,
                        info.device, info.rendezvous)
            return Trainer(cfg, run, info, start_over=start_over, monitor=monitor, report=report).run(flag)
    finally:
        flag.restore()
        destroy_distributed()


def check_run_config(run: RunDir, cfg: Config, allow_change: bool) -> None:
    """Refuse to continue the run in `run` with a config other than the one it was started with.

    Raises:
        ConfigError: `run/config.yaml` differs from `cfg` (the differing keys are listed) and
            `allow_change` is not set, or it is not readable YAML.
    """
    if not run.config.is_file():
        return
    try:
        old = yaml.safe_load(run.config.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ConfigError(f"{run.config} is not valid YAML ({err}); use another --output-dir") from None
    diffs = config_differences(old if isinstance(old, dict) else {}, cfg.to_dict())
    if not diffs:
        return
    shown = "; ".join(diffs[:8]) + (f"; ... ({len(diffs)} keys)" if len(diffs) > 8 else "")
    if not allow_change:
        raise ConfigError(f"{run.root} holds a run with another config ({shown}): use another --output-dir, or "
                          "--allow-config-change to continue that run with this config")
    logger.warning("continuing %s with a changed config: %s", run.root, shown)


def split_dataset_path(spec: str) -> list[str]:
    """`train.dataset_path`: one or several shard specs separated by ';'."""
    parts = split_specs(spec)
    if not parts:
        raise DinoUSError("train.dataset_path is empty: give a shards directory written by tools/build_dataset.py")
    return parts


class Trainer:
    """Owns the model, optimizer, schedules, data loader, checkpoints and telemetry of one pretraining run."""

    def __init__(self, cfg: Config, output_dir: str | Path, dist_info: DistInfo | None = None, *,
                 start_over: bool = False, monitor: MonitorFactory | None = None,
                 report: ReportWriter | None = None) -> None:
        self.cfg, self.start_over, self.report = cfg, start_over, report
        self.run_dir = RunDir(output_dir)
        self.dist = dist_info or init_distributed(cfg.runtime.device, cfg.runtime.dist_backend)
        if self.dist.is_main:
            write_config(cfg, self.run_dir.root)
        torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank
        self.model = SSLMetaArch(cfg)
        self.arch = vit_kwargs(cfg.student, cfg.crops.global_crops_size)  # the backbones' DinoVisionTransformer kwargs
        self.model.init_weights()
        if cfg.student.pretrained_weights:
            self._load_pretrained(cfg.student.pretrained_weights)
        self.flops_per_image = training_flops_per_image(self.model, cfg)
        parallelize_meta_arch(self.model, cfg, self.dist.device)
        self.model.train()
        self.optimizer = build_adamw(self.model.get_params_groups(), betas=(cfg.optim.adamw_beta1,
                                                                                cfg.optim.adamw_beta2))
        self.schedules = build_schedulers(cfg, self.dist.world_size)
        self.total_iterations = cfg.optim.epochs * cfg.train.OFFICIAL_EPOCH_LENGTH
        self.loader = self._build_loader()
        self.train_state = TrainState()
        self.checkpointer = CheckpointManager(self.run_dir.ckpt, period=cfg.checkpointing.period,
                                              max_to_keep=cfg.checkpointing.max_to_keep,
                                              keep_every=cfg.checkpointing.keep_every)
        self.watch = CollapseWatch()
        warmup = cfg.optim.warmup_epochs * cfg.train.OFFICIAL_EPOCH_LENGTH  # a fresh teacher looks collapsed
        self.selfdistill = SelfDistillationWatch(cfg.dino.head_n_prototypes, cfg.train.selfdistill_alarm_iterations,
                                                 start=warmup)
        self.peak, self.peak_source = peak_tflops(self.dist.device, cfg.runtime.peak_tflops)
        self.monitor = monitor(cfg, self.dist, self.total_iterations) if monitor is not None else None
        self.temp_control = TeacherTempController.from_config(cfg)

    def _load_pretrained(self, path: str) -> None:
        """Initialise student and teacher backbones from official or converted weights (the study's scheme 2)."""
        load_backbone_weights(self.model.student.backbone, path)
        self.model.teacher.backbone.load_state_dict(self.model.student.backbone.state_dict())
        logger.info("initialised student and teacher backbones from %s", path)

    def _build_loader(self):
        cfg = self.cfg
        specs = split_dataset_path(cfg.train.dataset_path)
        weights = cfg.data.pool_weights or None
        return make_data_loader(specs if weights or len(specs) > 1 else specs[0], weights=weights,
                                batch_size=cfg.train.batch_size_per_gpu, num_workers=cfg.train.num_workers,
                                transform=build_ssl_transform(cfg), collate_fn=build_collate_fn(cfg),
                                seed=cfg.train.seed, window_shards=cfg.data.window_shards, drop_last=True,
                                strict=cfg.data.strict, rank=self.dist.rank, world_size=self.dist.world_size,
                                pin_memory=self.dist.device.type == "cuda")

    def _states(self) -> dict:
        """The global states (collective: every rank's skipped-sample counts are gathered into them)."""
        data = self.loader.state_dict()  # identical on every rank but for `rank` and `skipped`
        data["skipped_by_rank"] = all_gather_object(data["skipped"])
        self.train_state.extra["data"] = data
        self.train_state.extra["selfdistill"] = self.selfdistill.state_dict()
        self.train_state.extra["teacher_temp"] = self.temp_control.state_dict()
        if self.monitor is not None:
            self.train_state.extra["monitor"] = self.monitor.state_dict()
        return {"model": ModelOptimizerState(self.model, self.optimizer), "train": self.train_state}

    def save(self, iteration: int) -> Path:
        """Checkpoint after `iteration` (the next run starts at iteration + 1)."""
        self.train_state.iteration = iteration
        return self.checkpointer.save(iteration, self._states(), rank_states={"rng": RNGState()})

    def resume(self) -> int:
        """Load the latest complete checkpoint if any; returns the first iteration to run."""
        try:
            loaded = self.checkpointer.load(self._states(), rank_states={"rng": RNGState()})
        except NoUsableCheckpointError as err:
            if not self.start_over:
                raise NoUsableCheckpointError(f"{err}. Not starting from scratch over them: repair or move them, "
                                              "or pass --start-over (they are moved aside, not deleted)") from None
            self.checkpointer.set_aside()
            loaded = None
        if loaded is None:
            return 0
        self.selfdistill.load_state_dict(self.train_state.extra.get("selfdistill", {}))
        self.temp_control.load_state_dict(self.train_state.extra.get("teacher_temp", {}))
        if self.monitor is not None:
            self.monitor.load_state_dict(self.train_state.extra.get("monitor", {}))
        data_state = dict(self.train_state.extra["data"])
        by_rank = data_state.pop("skipped_by_rank", None)  # absent in checkpoints of older versions
        if by_rank is not None and len(by_rank) == self.dist.world_size:
            data_state["skipped"] = by_rank[self.dist.rank]
        try:
            self.loader.load_state_dict(data_state)
        except ConfigError as err:  # another world size: the epoch's per-rank slices no longer exist
            logger.warning("%s; continuing at the start of epoch %d instead", err, data_state["epoch"] + 1)
            self.loader.set_epoch(data_state["epoch"] + 1)
        return loaded + 1

    def _keep_best_marked(self) -> None:
        """After a resume: `best.json` names the monitor's best (a crash between the save of a new best and
        its marking left the previous one named)."""
        best = self.monitor.best
        marked = self.checkpointer.best()
        if best is not None and (marked is None or marked[1]["iteration"] != best["iteration"]):
            if invalid_reason(self.run_dir.ckpt / str(best["iteration"])) is None:
                self.checkpointer.mark_best(best["iteration"], best)

    def write_teacher_files(self, iteration: int, *, teacher: bool, export: bool) -> None:
        """After committing checkpoint `iteration` (collective: the teacher is consolidated on rank 0 once):
        `OUT/teacher.pth` when this is the checkpoint `evaluation.teacher_checkpoint` picks (`teacher`), the
        periodic export `OUT/eval/training_<iteration>/` (`export`); one file, two names where both
        (`dinov3_us.weights.checkpoint.write_trained_teacher`)."""
        state = full_state_dict(self.model.teacher.backbone)
        if self.dist.is_main:
            best = self.monitor.best if self.monitor is not None else None
            write_trained_teacher(self.run_dir, self.cfg, self.arch, iteration, state,
                                  best=best, teacher=teacher, export=export)

    def run(self, flag: PreemptionFlag | None = None) -> int:
        """Train until the end of the schedule; returns 0, or `REQUEUE_EXIT_CODE` after a preemption signal.

        `flag`: preemption handlers installed earlier by the caller (`pretrain` installs them before the
        model is built); None installs them here.
        """
        cfg = self.cfg
        own_flag = flag is None
        flag = PreemptionFlag().install() if own_flag else flag
        start = self.resume()
        metric_logger = MetricLogger(self.run_dir.root, self.total_iterations, start, enabled=self.dist.is_main)
        eval_period, log_period = cfg.evaluation.eval_period_iterations, cfg.train.log_period
        global_batch = cfg.train.batch_size_per_gpu * self.dist.world_size
        bad_steps, last_saved, exit_code = 0, start - 1, 0
        # teacher.pth follows the monitor's best (auto, best) or is the last iteration's teacher
        follows_best = self.monitor is not None and cfg.evaluation.teacher_checkpoint != "latest"
        batches = self.loader.infinite()
        t_last, it = time.perf_counter(), start - 1
        t_start = t_last
        if all_reduce_max(float(flag.requested)) > 0:  # signalled during start-up: nothing new to save
            exit_code, start = REQUEUE_EXIT_CODE, self.total_iterations
            logger.warning("preempted before the first step; exiting with %d for requeue", exit_code)
        elif self.monitor is not None:
            self.monitor.start()
            self._keep_best_marked()
        try:
            for it in range(start, self.total_iterations):
                batch = next(batches)
                official = self.schedules.at(it)["teacher_temp"]
                temp = self.temp_control.at(official) if self.temp_control.auto else None
                metrics = train_step(self.model, self.optimizer, batch, self.schedules, it,
                                     clip_grad=cfg.optim.clip_grad, teacher_temp=temp)
                if temp is not None:  # collective
                    self.temp_control.update(metrics, temp, self.schedules.at(it + 1)["teacher_temp"])
                if metrics["skipped"]:
                    bad_steps += 1
                    logger.warning("iteration %d: non-finite loss (%s in a row), step skipped", it, bad_steps)
                    if bad_steps > cfg.train.max_consecutive_nonfinite:
                        raise NonFiniteLossError(f"{bad_steps} consecutive non-finite losses at iteration {it}; "
                                                 f"last checkpoint: {self.checkpointer.latest()}")
                else:
                    bad_steps = 0
                self.train_state.images_seen += global_batch
                monitored = self.monitor is not None and self.monitor.due(it)
                if monitored:
                    metrics |= self.monitor.score(self.model.teacher["backbone"], it)
                if (it + 1) % log_period == 0 or it == start or monitored:
                    now = time.perf_counter()
                    n_steps = log_period if it != start else 1
                    metrics["images_per_second"] = global_batch * n_steps / max(now - t_last, 1e-9)
                    achieved = metrics["images_per_second"] * self.flops_per_image / 1e12
                    metrics["tflops"], metrics["mfu"] = achieved, achieved / (self.peak * self.dist.world_size)
                    if self.dist.device.type == "cuda":
                        metrics["max_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
                    alarm = self.selfdistill.update(it, metrics)
                    metric_logger.log(it, metrics)
                    if alarm:
                        downstream = self.monitor.summary() if self.monitor is not None else None
                        logger.warning("iteration %d: %s%s", it, alarm,
                                       f". The downstream monitor: {downstream}" if downstream else "")
                    for problem in self.watch.check(metrics) if it >= self.selfdistill.start else []:
                        logger.warning("iteration %d: collapse watch: %s", it, problem)
                    t_last = now
                new_best = monitored and self.monitor.update_best(it, metrics)
                if self.checkpointer.should_save(it + 1) or it + 1 == self.total_iterations or new_best:
                    self.save(it)
                    last_saved = it
                if new_best:
                    self.checkpointer.mark_best(it, self.monitor.best)
                last = it + 1 == self.total_iterations
                export = last or (eval_period > 0 and (it + 1) % eval_period == 0)
                teacher = new_best if follows_best else last  # the checkpoint teacher.pth holds, just committed
                if export or teacher:
                    self.write_teacher_files(it, teacher=teacher, export=export)
                if all_reduce_max(float(flag.requested)) > 0:
                    if last_saved != it:
                        self.save(it)
                        last_saved = it
                    exit_code = REQUEUE_EXIT_CODE
                    break
        finally:
            if own_flag:
                flag.restore()
            metric_logger.close()
        if dist.is_initialized():
            dist.barrier()
        if exit_code == 0:
            self.write_teacher()
        if self.monitor is not None and self.monitor.seconds_total:
            wall = time.perf_counter() - t_start
            spent = self.monitor.seconds_total
            logger.info("downstream monitor: %.1f s in all, %.1f%% of this run's %.0f s; best %s", spent,
                        100 * spent / wall, wall, self.monitor.best)
        logger.info("stopped after %d/%d iterations (exit code %d)", it + 1, self.total_iterations, exit_code)
        if self.dist.is_main:
            self.write_report()
        return exit_code

    def write_teacher(self) -> Path | None:
        """A completed run's check that `OUT/teacher.pth` holds the checkpoint `evaluation.teacher_checkpoint`
        picks (auto: the best on the downstream monitor where it marked one, else the final); collective.

        The loop wrote it from memory when it committed that checkpoint (`write_teacher_files`); where it did not
        (a crash between the two, a run folder of an older version), rank 0 reads it back from the checkpoint
        (`dinov3_us.weights.checkpoint.write_run_teacher`: the same bytes). Raises `CheckpointError` on every rank
        when there is no such checkpoint (`best` without a best).
        """
        out, error = None, None
        if self.dist.is_main:
            try:
                out = write_run_teacher(self.run_dir, self.cfg.evaluation.teacher_checkpoint)
            except DinoUSError as err:
                error = str(err)
        error = next((e for e in all_gather_object(error) if e), None)
        if error:
            raise CheckpointError(error)
        return out

    def write_report(self) -> None:
        """The run report (`OUT/report.md`, `.html`) when a writer was given; a failure to draw it is a warning,
        not a failed run."""
        if self.report is None:
            return
        try:
            self.report(self.run_dir)
        except Exception as err:  # noqa: BLE001 - the training itself succeeded
            logger.warning("could not write the run report: %s", err)

