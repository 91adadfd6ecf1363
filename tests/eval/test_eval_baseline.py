"""`report.baseline=random`: the same evaluation on a random initialisation of the same architecture, paired."""

import json

import numpy as np
import pytest
import torch
from eval_testutil import run_tool

from dinov3_us.eval.metrics import chance_levels
from dinov3_us.models.vision_transformer import DinoVisionTransformer
from dinov3_us.weights import save_backbone

# not a released architecture: patch 8, 2 storage tokens, 1 channel (what configs/train/tiny_cpu.yaml trains)
ARCH = dict(img_size=32, patch_size=8, in_chans=1, embed_dim=64, depth=2, num_heads=2, n_storage_tokens=2,
            layerscale_init=1e-5, mask_k_bias=True, norm_layer="layernormbf16", pos_embed_rope_dtype="fp32")


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    torch.manual_seed(123)
    model = DinoVisionTransformer(**ARCH)
    model.init_weights()
    return save_backbone(model.state_dict(), tmp_path_factory.mktemp("w") / "teacher.pth", ARCH, iteration=0)


@pytest.mark.parametrize("tool", ["eval_knn.py", "eval_linear.py"])
@pytest.mark.slow
def test_baseline_is_the_same_architecture_scored_on_the_same_samples(tool, weights, blob_dir, tmp_path):
    out = tmp_path / "eval"
    proc = run_tool(tool, "--pretrained-weights", weights, "--train-dataset", f"{blob_dir}:train",
                    "--val-dataset", f"{blob_dir}:val", "--test-datasets", f"{blob_dir}:test", "--image-size", 32,
                    "--output-dir", out, "--no-progress", "report.bootstrap=50", "report.baseline=random",
                    "linear.epochs=2", "linear.n_last_blocks=[1]")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ours = json.loads((out / "results.json").read_text())
    base = json.loads((out / "baseline_random" / "results.json").read_text())
    assert base["weights"]["kind"] == "random" and base["weights"]["architecture_of"] == str(weights)
    assert base["weights"]["arch"] == ours["weights"]["arch"] and base["weights"]["arch"]["patch_size"] == 8
    assert base["weights"]["sha256"] != ours["weights"]["sha256"]
    v = ours["vs_random"]
    assert v["metric"] == "weighted_f1" and v["random_sha256"] == base["weights"]["sha256"]
    assert v["b"] == pytest.approx(ours["metrics"]["weighted_f1"])
    assert v["a"] == pytest.approx(base["metrics"]["weighted_f1"])
    assert v["difference"] == pytest.approx(v["b"] - v["a"]) and v["ci"][0] <= v["difference"] <= v["ci"][1]
    assert v["n_samples"] == 15 and 0.0 <= v["p_not_better"] <= 1.0
    assert v["chance"]["majority_class"] == pytest.approx(1 / 6)  # 5/5/5 test labels, all called the first class
    assert 0.2 < v["chance"]["uniform_guess"] < 0.45
    summary = (out / "summary.md").read_text()
    assert "Against a random initialisation of the same architecture" in summary

    compared = run_tool("compare_results.py", out, "--output-dir", tmp_path / "cmp")
    assert compared.returncode == 0, compared.stderr
    assert "Against a random initialisation" in compared.stdout and f"{v['difference']:+.3f}" in compared.stdout


@pytest.mark.slow
def test_a_segmentation_baseline_writes_into_its_own_folder(weights, blob_dir, tmp_path):
    out = tmp_path / "seg"  # its figures too: the baseline's folder used to be created only by its results
    proc = run_tool("eval_segmentation.py", "--pretrained-weights", weights, "--train-dataset", f"{blob_dir}:train",
                    "--val-dataset", f"{blob_dir}:val", "--test-datasets", f"{blob_dir}:test", "--image-size", 32,
                    "--output-dir", out, "--no-progress", "report.bootstrap=50", "report.baseline=random",
                    "segmentation.epochs=2", "segmentation.learning_rates=[0.1]")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (out / "baseline_random" / "examples.png").stat().st_size > 0
    assert json.loads((out / "baseline_random" / "results.json").read_text())["weights"]["kind"] == "random"
    assert "vs_random" in json.loads((out / "results.json").read_text())


def test_chance_levels_of_an_imbalanced_test_set():
    y = np.array([0] * 8 + [1] * 2)
    levels = chance_levels(y, 2, "accuracy", n=2000, seed=0)
    assert levels["majority_class"] == pytest.approx(0.8)
    assert levels["uniform_guess"] == pytest.approx(0.5, abs=0.02)
