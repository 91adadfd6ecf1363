"""Every evaluation command end to end on small shards: exact output files, results.json keys, one-line errors."""

import json

import pytest
from eval_testutil import run_tool

pytestmark = pytest.mark.slow  # every test runs an evaluation command in a subprocess

BASE_KEYS = {"task", "created", "dinov3_us_version", "world_size", "weights", "datasets", "n", "metrics",
             "test_metrics", "val_metrics", "timing", "config"}
CLASSIFICATION = {"accuracy", "balanced_accuracy", "weighted_f1", "macro_f1", "per_class", "confusion_matrix",
                  "weighted_f1_ci", "balanced_accuracy_ci", "ci_level", "bootstrap"}
LOGS = {"config.yaml", "log.txt", "results.json", "summary.md", "predictions.csv"}


def splits(root, test=("test",)):
    return ["--train-dataset", f"{root}:train", "--val-dataset", f"{root}:val",
            "--test-datasets", *[f"{root}:{t}" for t in test]]


def backbone():
    return ["--pretrained-weights", "random", "--arch", "vit_test", "--image-size", 32, "--no-progress",
            "report.bootstrap=100"]


def check(proc, out, files, keys) -> dict:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert {p.name for p in out.iterdir()} == files
    results = json.loads((out / "results.json").read_text())
    assert set(results) == BASE_KEYS | keys
    assert results["weights"]["path"] == "random" and len(results["weights"]["sha256"]) == 64
    return results


def test_eval_linear_with_label_efficiency(phantom_dir, tmp_path):
    out = tmp_path / "linear"
    proc = run_tool("eval_linear.py", *backbone(), *splits(phantom_dir), "--output-dir", out,
                    "linear.epochs=3", "linear.batch_size=8", "linear.n_last_blocks=[1,2]",
                    "linear.label_fractions=[0.5,1.0]", "linear.label_seeds=[0,1]")
    r = check(proc, out, LOGS | {"confusion_matrix.png", "label_efficiency.png"},
              {"classes", "class_counts", "best_head", "grid", "label_efficiency"})
    assert r["task"] == "linear" and r["classes"] == ["thalami", "ventricles", "cerebellum"]
    assert r["n"] == {"train": 36, "val": 6, "test": 6}
    assert r["class_counts"] == {"train": [12, 12, 12], "val": [2, 2, 2], "test": [2, 2, 2]}
    assert set(r["metrics"]) == CLASSIFICATION and r["test_metrics"]["test"] == r["metrics"]
    assert sum(r["metrics"]["confusion_matrix"]["matrix"], []) and r["grid"]["heads"] == 13 * 2 * 2
    assert r["best_head"]["name"] in r["grid"]["val_scores"]
    assert r["best_head"]["val_score"] == pytest.approx(max(r["grid"]["val_scores"].values()), abs=1e-6)
    assert r["config"]["linear"]["epochs"] == 3 and r["config"]["model"]["arch"] == "vit_test"
    curve = r["label_efficiency"]["curve"]
    assert [p["fraction"] for p in curve] == [0.5, 1.0] and curve[1]["n_train"] == 36 and curve[0]["n_train"] < 36
    assert len(r["label_efficiency"]["runs"]) == 4
    assert "weighted F1" in (out / "summary.md").read_text()


def test_eval_knn_two_test_sets(phantom_dir, tmp_path):
    out = tmp_path / "knn"
    proc = run_tool("eval_knn.py", *backbone(), *splits(phantom_dir, test=("test", "val")), "--output-dir", out)
    r = check(proc, out, LOGS | {"confusion_matrix.png", "confusion_matrix_test_val.png"},
              {"classes", "class_counts", "best_k", "ks", "per_k", "temperature", "val_scores_per_k"})
    assert r["ks"] == [10, 20, 36] and r["best_k"] in r["ks"]  # 100 and 200 clipped to the 36 train samples
    assert list(r["test_metrics"]) == ["test", "test:val"] and r["n"]["test:val"] == 6
    rows = (out / "predictions.csv").read_text().splitlines()
    assert rows[0] == "dataset,key,group,target,prediction,target_name,prediction_name"
    assert len(rows) == 1 + 6 + 6 and sum(row.startswith("test:val,") for row in rows) == 6


def test_eval_finetune(phantom_dir, tmp_path):
    out = tmp_path / "finetune"
    proc = run_tool("eval_finetune.py", *backbone(), *splits(phantom_dir), "--output-dir", out,
                    "finetune.epochs=2", "finetune.batch_size=8")
    r = check(proc, out, LOGS | {"confusion_matrix.png"},
              {"classes", "class_counts", "best_epoch", "epochs_run", "stopped_early", "select_metric",
               "best_val_score", "history"})
    assert r["epochs_run"] == 2 and len(r["history"]) == 2 and set(r["metrics"]) == CLASSIFICATION


def test_eval_segmentation_and_compare(blob_dir, phantom_dir, tmp_path):
    out = tmp_path / "seg"
    proc = run_tool("eval_segmentation.py", *backbone(), *splits(blob_dir), "--output-dir", out,
                    "segmentation.epochs=3", "segmentation.learning_rates=[0.1,1.0]")
    r = check(proc, out, LOGS | {"examples.png"}, {"best_lr", "val_dice_per_lr", "foreground_threshold"})
    assert {"dice", "iou", "dice_ci", "iou_ci", "pixel_accuracy"} <= set(r["metrics"])
    assert 0 <= r["metrics"]["dice"] <= 1 and r["best_lr"] in (0.1, 1.0)
    knn = tmp_path / "knn"
    assert run_tool("eval_knn.py", *backbone(), *splits(phantom_dir), "--output-dir", knn).returncode == 0
    cmp_out = tmp_path / "cmp"
    proc = run_tool("compare_results.py", knn / "results.json", out, "--output-dir", cmp_out)
    assert proc.returncode == 0, proc.stderr
    assert {p.name for p in cmp_out.iterdir()} == {"comparison.md", "comparison.png"}
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| knn") or line.startswith("| seg")]
    assert len(rows) == 2 and "Dice (CI)" in proc.stdout
    assert "no paired comparison" in proc.stderr  # a kNN and a segmentation run share no test samples
    knn_b = tmp_path / "knn_b"
    assert run_tool("eval_knn.py", *backbone(), *splits(phantom_dir), "--output-dir", knn_b,
                    "report.seed=1").returncode == 0
    proc = run_tool("compare_results.py", knn, knn_b, "--output-dir", cmp_out)
    assert proc.returncode == 0, proc.stderr
    assert "Paired against knn" in proc.stdout and "| +0.000 [+0.000, +0.000] | 1.000 |" in proc.stdout


@pytest.mark.parametrize("extra, message", [
    (["linear.epoch=3"], "did you mean 'linear.epochs'"),
    (["--arch", "vit_tset"], "model.arch: expected one of"),
    (["linear.n_last_blocks=[1,4]"], "must lie in 1..2"),
])
def test_user_errors_exit_2_without_traceback(phantom_dir, tmp_path, extra, message):
    args = ["--pretrained-weights", "random", "--arch", "vit_test", "--image-size", 32, *splits(phantom_dir)]
    if extra[0] == "--arch":
        args[3] = extra[1]
        extra = []
    proc = run_tool("eval_linear.py", *args, "--output-dir", tmp_path, *extra)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert message in proc.stderr


@pytest.mark.parametrize("tool", ["eval_linear.py", "eval_knn.py"])
def test_unreadable_weights_exit_2_with_one_line(phantom_dir, tmp_path, tool):
    import torch

    text = tmp_path / "notes.pth"
    text.write_text("not weights\n")
    good = tmp_path / "good.pth"
    torch.save({"cls_token": torch.zeros(1, 1, 64), "patch_embed.proj.weight": torch.zeros(64, 1, 8, 8)}, good)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(good.read_bytes()[:-100])
    for weights, message in [(text, "is not a PyTorch or safetensors file"), (cut, "is truncated/corrupt: ")]:
        proc = run_tool(tool, "--pretrained-weights", weights, *splits(phantom_dir), "--output-dir", tmp_path / "o")
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
        error = [line for line in proc.stderr.splitlines() if line.startswith("error")]
        assert len(error) == 1 and str(weights) in error[0] and message in error[0], proc.stderr[-2000:]


def test_missing_inputs_are_named(tmp_path):
    proc = run_tool("eval_knn.py", "--pretrained-weights", "random", "--arch", "vit_test", "--train-dataset",
                    tmp_path / "nowhere:train", "--test-datasets", tmp_path / "nowhere:test", "--output-dir", tmp_path)
    assert proc.returncode == 2 and "nowhere" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_tool("compare_results.py", tmp_path / "missing.json")
    assert proc.returncode == 2 and "missing.json" in proc.stderr


def test_linear_defaults_fit_a_shallow_backbone_but_an_explicit_value_does_not(phantom_dir, tmp_path):
    out = tmp_path / "linear"
    proc = run_tool("eval_linear.py", *backbone(), *splits(phantom_dir), "--output-dir", out, "linear.epochs=1",
                    "linear.learning_rates=[0.01]")
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads((out / "results.json").read_text())
    assert r["config"]["linear"]["n_last_blocks"] == [1, 2] and r["grid"]["heads"] == 2 * 2
    assert "linear.n_last_blocks=[1, 2]: the default [1, 4] clipped to the backbone's 2 blocks" in \
        (out / "log.txt").read_text()


def test_image_size_defaults_to_the_exported_teachers_training_resolution(phantom_dir, tmp_path):
    from dinov3_us.models.vision_transformer import DinoVisionTransformer
    from dinov3_us.weights import save_backbone

    arch = dict(img_size=32, patch_size=8, in_chans=1, embed_dim=64, depth=2, num_heads=2)
    model = DinoVisionTransformer(**arch)
    model.init_weights()
    weights = save_backbone(model.state_dict(), tmp_path / "teacher.pth", arch, iteration=5)
    common = ["--pretrained-weights", weights, "--no-progress", "report.bootstrap=10", *splits(phantom_dir)]
    for extra, size in [([], 32), (["--image-size", 16], 16)]:
        out = tmp_path / f"knn{size}"
        proc = run_tool("eval_knn.py", *common, *extra, "--output-dir", out)
        assert proc.returncode == 0, proc.stderr[-3000:]
        r = json.loads((out / "results.json").read_text())
        assert r["config"]["data"]["image_size"] == size and r["weights"]["arch"]["img_size"] == size
        assert ("the backbone's training resolution (teacher.json)" in (out / "log.txt").read_text()) == (not extra)


def test_a_one_class_test_set_is_warned_about(blob_dir, tmp_path):
    from dinov3_us.data.shards import write_shard
    from dinov3_us.data.shards.reader import iter_samples

    one = tmp_path / "left_only"
    one.mkdir()
    samples = [(key, s) for _, key, s in iter_samples(str(blob_dir / "test-000000.tar"))
               if json.loads(s["json"])["label"] == "left"]
    write_shard(one / "test-000000.tar", samples)
    (one / "manifest.json").write_text(json.dumps({
        "source": "blobs", "labels": ["left", "centre", "right"], "counts": {"test": {"left": len(samples)}},
        "shards": {"test": [{"url": "test-000000.tar", "n": len(samples)}]}}))
    out = tmp_path / "knn"
    proc = run_tool("eval_knn.py", *backbone(), *splits(blob_dir), f"{one}:test", "--output-dir", out)
    r = check(proc, out, LOGS | {"confusion_matrix.png", "confusion_matrix_left_only_test.png"},
              {"classes", "class_counts", "best_k", "ks", "per_k", "temperature", "val_scores_per_k", "warnings"})
    assert r["class_counts"] == {"train": [16, 16, 16], "val": [5, 5, 5], "blobs:test": [5, 5, 5],
                                 "left_only:test": [5, 0, 0]}
    name = "left_only:test"
    assert r["warnings"] == [f"test set {name} ({one}:test) has 1 class present (left): its scores (and their CIs) "
                             "do not measure telling the classes apart"]
    assert f"WARNING test set {name} (" in (out / "log.txt").read_text()
    assert f"- **WARNING**: test set {name}" in (out / "summary.md").read_text()


@pytest.mark.parametrize("task", ["linear", "knn", "finetune", "segmentation"])
def test_help_gives_an_override_example_of_the_tools_own_section(task):
    proc = run_tool(f"eval_{task}.py", "--help")
    assert proc.returncode == 0, proc.stderr
    overrides = " ".join(proc.stdout.split("\n  overrides", 1)[1].split())
    assert overrides.startswith(f"config overrides section.key=value (e.g. {task}.")
    assert task == "linear" or "linear." not in overrides
