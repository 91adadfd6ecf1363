"""The launchers before submission: dry-run scripts, and the errors that stop a launch with nothing submitted.

These run in-process against a fake `sinfo` (a partition `gpu` with 4 GPUs per node, a CPU partition
`debug`), so they need no cluster.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import yaml

from dinov3_us.configs import load_config
from dinov3_us.launch import submit_eval, submit_pretrain

REPO = Path(__file__).resolve().parents[2]
TINY = str(REPO / "configs" / "train" / "tiny_cpu.yaml")


@pytest.fixture
def fake_sinfo(tmp_path, monkeypatch) -> Path:
    """A `sinfo` that lists partitions debug (default, no GPU) and gpu (nodes with 2 or 4 A100s)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "sinfo"
    script.write_text("#!/bin/sh\necho 'debug*|(null)'\necho 'gpu|gpu:a100:2(S:0-1)'\necho 'gpu|gpu:a100:4(S:0,1)'\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return bin_dir


def launch(args: list[str], capsys) -> tuple[int, str, str]:
    code = submit_pretrain.main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_dry_run_prints_the_sbatch_scripts_of_the_chain(phantom_shards, tmp_path, fake_sinfo, capsys):
    out = tmp_path / "run"
    code, stdout, _ = launch(["--cluster", "slurm", "--dry-run", "--nodes", "2", "--partition", "gpu",
                              "--account", "proj", "--qos", "high", "--timeout", "600", "--mem", "200G",
                              "--config-file", TINY, "--output-dir", str(out),
                              f"train.dataset_path={phantom_shards}:train", "runtime.device=auto"], capsys)
    assert code == 0
    scripts = stdout.split("#!/bin/bash")[1:]
    assert len(scripts) == 3  # pretrain (which writes OUT/teacher.pth), linear, knn
    pretrain, linear, knn = scripts
    for line in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=4", "#SBATCH --gpus-per-node=4",
                 "#SBATCH --partition=gpu", "#SBATCH --account=proj", "#SBATCH --qos=high", "#SBATCH --time=600",
                 "#SBATCH --mem=200G", "#SBATCH --signal=USR2@90", "--kill-on-bad-exit=1"):
        assert line in pretrain, line
    assert "--dependency" not in pretrain and "evaluation.teacher_checkpoint" not in pretrain  # the config's
    for ev in (linear, knn):
        assert "#SBATCH --dependency='afterok:<pretrain>'" in ev and "#SBATCH --kill-on-invalid-dep=yes" in ev
    assert "tools/eval_linear.py" in stdout and f"{phantom_shards}:test" in stdout
    assert stdout.count(f"--pretrained-weights {out / 'teacher.pth'} ") == 2  # the pretraining's own teacher.pth
    assert "linear.n_last_blocks=[1,2]" in stdout  # vit_test has 2 blocks
    assert not out.exists(), "a dry run must not write anything"


def test_dry_run_local_lists_processes(phantom_shards, tmp_path, capsys):
    code, stdout, _ = launch(["--cluster", "local", "--dry-run", "--nodes", "2", "--config-file", TINY,
                              "--output-dir", str(tmp_path / "run"), f"train.dataset_path={phantom_shards}:train"],
                             capsys)
    assert code == 0
    assert "2 nodes x 1 = 2 CPU processes" in stdout
    assert "#!/bin/bash" not in stdout and "job pretrain: 1 node(s) x 2 task(s)" in stdout


def test_more_gpus_than_the_partition_has_is_an_error(phantom_shards, tmp_path, fake_sinfo, capsys):
    code, _, err = launch(["--cluster", "slurm", "--dry-run", "--partition", "gpu", "--gpus-per-node", "8",
                           "--config-file", TINY, "--output-dir", str(tmp_path / "run"),
                           f"train.dataset_path={phantom_shards}", "runtime.device=cuda"], capsys)
    assert code == 2
    assert "--gpus-per-node 8 is more than partition gpu has" in err and "at most 4 GPUs" in err
    assert "nothing was submitted" in err and "Traceback" not in err


def test_gpu_run_on_a_partition_without_gpus_is_an_error(phantom_shards, tmp_path, fake_sinfo, capsys):
    code, _, err = launch(["--cluster", "slurm", "--dry-run", "--config-file", TINY, "--output-dir",
                           str(tmp_path / "run"), f"train.dataset_path={phantom_shards}", "runtime.device=auto"],
                          capsys)
    assert code == 2 and "partition debug has no GPUs" in err and "runtime.device=cpu" in err


def test_unknown_partition_is_an_error(phantom_shards, tmp_path, fake_sinfo, capsys):
    code, _, err = launch(["--cluster", "slurm", "--dry-run", "--partition", "gpus", "--config-file", TINY,
                           "--output-dir", str(tmp_path / "run"), f"train.dataset_path={phantom_shards}"], capsys)
    assert code == 2 and "no such SLURM partition" in err and "debug, gpu" in err


@pytest.mark.parametrize("override, message", [
    ("train.dataset_path=/nonexistent/shards", "/nonexistent/shards"),
    ("optim.lrr=0.1", "did you mean 'optim.lr'"),
    ("train.dataset_path=", "train.dataset_path is empty"),
    ("student.pretrained_weights=/nonexistent/w.pth", "/nonexistent/w.pth does not exist"),
])
def test_bad_config_is_an_error_before_submission(phantom_shards, tmp_path, capsys, override, message):
    out = tmp_path / "run"
    code, _, err = launch(["--cluster", "local", "--config-file", TINY, "--output-dir", str(out),
                           f"train.dataset_path={phantom_shards}", override], capsys)
    assert code == 2, err
    assert message in err and "nothing was submitted" in err and "Traceback" not in err
    assert not out.exists()


def test_missing_config_file_is_an_error(tmp_path, capsys):
    code, _, err = launch(["--cluster", "local", "--config-file", str(tmp_path / "nope.yaml"),
                           "--output-dir", str(tmp_path / "run")], capsys)
    assert code == 2 and "nope.yaml: no such file" in err


def test_output_dir_with_another_config_needs_resume(phantom_shards, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    earlier = load_config(TINY, [f"train.dataset_path={phantom_shards}", "optim.lr=0.5"])
    (out / "config.yaml").write_text(yaml.safe_dump(earlier.to_dict()))
    args = ["--cluster", "local", "--dry-run", "--config-file", TINY, "--output-dir", str(out),
            f"train.dataset_path={phantom_shards}"]
    code, _, err = launch(args, capsys)
    assert code == 2
    assert "holds a run with a different config" in err and "optim.lr: 0.5 -> 0.01" in err and "--resume" in err
    code, stdout, _ = launch([*args, "--resume"], capsys)
    assert code == 0 and "--resume: continuing the run" in stdout
    code, stdout, _ = launch([*args, "optim.lr=0.5"], capsys)  # the same config: it just resumes
    assert code == 0 and "holds a run with this config" in stdout


def test_a_read_only_output_dir_is_one_line_and_nothing_is_submitted(phantom_shards, read_only_dir, capsys):
    code, _, err = launch(["--cluster", "local", "--config-file", TINY, "--output-dir", str(read_only_dir / "run"),
                           f"train.dataset_path={phantom_shards}"], capsys)
    assert code == 2 and "Traceback" not in err
    assert err.splitlines() == [f"error: --output-dir {read_only_dir / 'run'}: cannot write there (read-only file "
                                f"system at {read_only_dir})", "nothing was submitted"]


def test_bad_evaluation_config_is_an_error_before_submission(phantom_shards, tmp_path, capsys):
    bad = tmp_path / "eval.yaml"
    bad.write_text("linear:\n  epoch: 3\n")
    base = ["--cluster", "local", "--dry-run", "--config-file", TINY, "--output-dir", str(tmp_path / "run"),
            f"train.dataset_path={phantom_shards}"]
    code, _, err = launch([*base, "--eval-config", str(bad)], capsys)
    assert code == 2 and "did you mean 'linear.epochs'" in err
    code, _, err = launch([*base, "--eval-config", "lineer"], capsys)
    assert code == 2 and "neither a task" in err
    code, _, err = launch([*base, "--eval-override", "knn.kss=[3]"], capsys)
    assert code == 2 and "did you mean 'knn.ks'" in err


def test_eval_config_names_and_overrides_after_it(phantom_shards, tmp_path, capsys):
    cfg = tmp_path / "probe.yaml"
    cfg.write_text("linear:\n  epochs: 3\n")
    code, stdout, _ = launch(["--cluster", "local", "--dry-run", "--config-file", TINY, "--output-dir",
                              str(tmp_path / "run"), f"train.dataset_path={phantom_shards}", "--eval-config",
                              "knn", f"linear={cfg}", "optim.epochs=3"], capsys)
    assert code == 0
    assert "job knn:" in stdout and "job linear_probe:" in stdout and "job linear:" not in stdout
    assert "optim.epochs=3" in stdout.split("job pretrain")[1].split("\n")[1]  # the override went to pretraining


def test_unlabelled_shards_skip_the_default_evaluation(tmp_path, capsys, data_dir):
    import subprocess
    import sys

    shards = tmp_path / "hc18"
    subprocess.run([sys.executable, str(REPO / "tools/build_dataset.py"), "--source", "hc18", "--root",
                    str(data_dir / "hc18"), "--out", str(shards), "--limit", "6", "--no-progress"], check=True,
                   capture_output=True)
    base = ["--cluster", "local", "--dry-run", "--config-file", TINY, "--output-dir", str(tmp_path / "run"),
            f"train.dataset_path={shards}"]
    code, stdout, _ = launch(base, capsys)
    assert code == 0 and "no evaluation" in stdout and "job linear" not in stdout
    code, stdout, _ = launch([*base, "--eval-override", "data.label_key=head_circumference_mm",
                              "--eval-override", "data.label_bins=3"], capsys)
    assert code == 0 and "job linear:" in stdout and "data.label_key=head_circumference_mm" in stdout


def test_submit_eval_dry_run_on_a_teacher_and_a_checkpoint(phantom_shards, tmp_path, capsys):
    teacher = tmp_path / "teacher.pth"
    teacher.write_bytes(b"not read by a dry run")
    code = submit_eval.main(["--cluster", "local", "--dry-run", "--weights", str(teacher), "--dataset",
                             str(phantom_shards), "--output-dir", str(tmp_path / "ev")])
    stdout = capsys.readouterr().out
    assert code == 0 and "job linear:" in stdout and "job knn:" in stdout and "job convert" not in stdout
    code = submit_eval.main(["--cluster", "local", "--dry-run", "--weights", str(tmp_path / "nothing"),
                             "--dataset", str(phantom_shards), "--output-dir", str(tmp_path / "ev")])
    assert code == 2 and f"weights file or folder {tmp_path / 'nothing'} does not exist" in capsys.readouterr().err
    ckpt = tmp_path / "run" / "ckpt" / "7"
    ckpt.mkdir(parents=True)
    code = submit_eval.main(["--cluster", "local", "--dry-run", "--weights", str(tmp_path / "run"), "--dataset",
                             str(phantom_shards), "--output-dir", str(tmp_path / "ev")])
    assert code == 2 and "run folder without a complete checkpoint" in capsys.readouterr().err


def _bin(tmp_path: Path, **scripts: str) -> Path:
    bin_dir = tmp_path / "fakebin"
    bin_dir.mkdir()
    for name, body in scripts.items():
        path = bin_dir / name
        path.write_text("#!/bin/sh\n" + body + "\n")
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return bin_dir


def test_auto_runs_locally_where_there_is_no_srun(phantom_shards, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(_bin(tmp_path)))
    code, stdout, _ = launch(["--dry-run", "--config-file", TINY, "--output-dir", str(tmp_path / "run"),
                              f"train.dataset_path={phantom_shards}"], capsys)
    assert code == 0 and "no `srun` on PATH" in stdout and "(local)" in stdout


def test_auto_with_srun_but_no_controller_is_an_error(phantom_shards, tmp_path, monkeypatch, capsys):
    fake = _bin(tmp_path, srun="exit 0", sinfo="echo 'sinfo: error: Unable to contact slurm controller' >&2; exit 1")
    monkeypatch.setenv("PATH", str(fake))
    code, _, err = launch(["--config-file", TINY, "--output-dir", str(tmp_path / "run"),
                           f"train.dataset_path={phantom_shards}"], capsys)
    assert code == 2 and "controller does not answer (sinfo: error: Unable to contact slurm controller)" in err
    assert "--cluster local" in err and not (tmp_path / "run").exists()


def test_submit_eval_help_is_about_evaluation_jobs():
    text = " ".join(submit_eval.build_parser().format_help().split())
    assert "pretraining" not in text.lower()
    assert "--timeout MIN time limit of each job (conversion and evaluations)" in text
    assert "--nodes NODES not used: each evaluation job runs on one node" in text
    pretrain = " ".join(submit_pretrain.build_parser().format_help().split())
    assert "--nodes NODES nodes for pretraining" in pretrain and "checkpoints and requeues itself" in pretrain


def test_eval_checkpoint_is_the_pretraining_override_that_picks_the_teacher(phantom_shards, tmp_path, capsys):
    code, stdout, _ = launch(["--cluster", "local", "--dry-run", "--config-file", TINY, "--output-dir",
                              str(tmp_path / "run"), f"train.dataset_path={phantom_shards}:train",
                              "--eval-checkpoint", "best"], capsys)
    assert code == 0 and "evaluation.teacher_checkpoint=best" in stdout and "job convert" not in stdout
    assert "job linear:" in stdout and "job knn:" in stdout


def test_the_one_rule_for_which_checkpoint_stands_for_a_run(tmp_path):
    from dinov3_us.checkpointer import CheckpointManager, TrainState
    from dinov3_us.run_dir import RunDir
    from dinov3_us.weights.resolve import select_checkpoint

    run = RunDir(tmp_path / "run")
    ckpt = CheckpointManager(run.ckpt, period=1, max_to_keep=5, keep_every=0)
    for it in (3, 7):
        ckpt.save(it, {"train": TrainState(iteration=it)})
    assert select_checkpoint(run, "auto") == run.ckpt / "7" and select_checkpoint(run, "best") is None  # no best
    ckpt.mark_best(3, {"metric": "monitor_knn", "score": 0.6})
    assert select_checkpoint(run, "auto") == select_checkpoint(run, "best") == run.ckpt / "3"
    assert select_checkpoint(run, "latest") == run.ckpt / "7"


def test_submit_eval_reads_the_run_config_through_the_validating_loader(phantom_shards, tmp_path, capsys):
    from dinov3_us.checkpointer import CheckpointManager, TrainState
    from dinov3_us.run_dir import RunDir

    run = RunDir(tmp_path / "run")
    CheckpointManager(run.ckpt, period=1, max_to_keep=5, keep_every=0).save(3, {"train": TrainState(iteration=3)})
    cfg = load_config(TINY, ["crops.global_crops_size=48"]).to_dict()
    run.config.write_text(yaml.safe_dump(cfg))
    args = ["--weights", str(run.root), "--dataset", str(phantom_shards), "--output-dir", str(tmp_path / "ev"),
            "--cluster", "local", "--dry-run"]
    assert submit_eval.main(args) == 0
    stdout = capsys.readouterr().out
    assert "data.image_size=48" in stdout  # the evaluations run at the run's resolution
    assert "job convert" in stdout and "after convert succeeded" in stdout  # no teacher.pth: converted first
    cfg["monitor"]["linear_epochs"] = 5  # a key the config does not have
    run.config.write_text(yaml.safe_dump(cfg))
    assert submit_eval.main(args) == 2
    err = capsys.readouterr().err
    assert str(run.config) in err and "monitor.linear_epochs" in err and "nothing was submitted" in err
