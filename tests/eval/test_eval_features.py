"""Feature extraction: what is cached equals what the backbone computes; 2 processes equal 1."""

import json

import pytest
import torch
from eval_testutil import run_tool

from dinov3_us.eval.backbone import load_eval_backbone
from dinov3_us.eval.data import EvalDataset, EvalTransform
from dinov3_us.eval.features import extract_features, linear_input


def _setup(phantom_dir, split="train"):
    backbone = load_eval_backbone("random", arch="vit_test", img_size=32)
    ds = EvalDataset(f"{phantom_dir}:{split}", EvalTransform(32, backbone.model.in_chans))
    model_id = {"sha256": backbone.sha256, "arch": backbone.arch}
    return backbone.model, ds, model_id


def test_features_are_the_backbone_outputs(phantom_dir):
    model, ds, _ = _setup(phantom_dir, "val")
    fs = extract_features(model, ds, n_blocks=2, patch_blocks=1, batch_size=4, progress=False)
    x = torch.stack([ds[i][0] for i in range(len(ds))])  # [N, 1, 32, 32]
    with torch.no_grad():
        layers = model.get_intermediate_layers(x, n=2, return_class_token=True, norm=True)
    torch.testing.assert_close(fs.tensors["cls"], torch.stack([layers[0][1], layers[1][1]], 1))
    torch.testing.assert_close(fs.tensors["patch_mean"], layers[1][0].mean(1))
    torch.testing.assert_close(fs.tensors["patch_tokens"], layers[1][0])
    assert fs.keys == ds.keys and fs.targets.tolist() == ds.targets.tolist()
    assert linear_input(fs.tensors, 2, True).shape == (len(ds), 3 * 64)


def test_cache_hit_equals_recomputation(phantom_dir, tmp_path):
    model, ds, model_id = _setup(phantom_dir)
    first = extract_features(model, ds, n_blocks=2, batch_size=8, model_id=model_id, cache_dir=tmp_path, progress=False)
    assert not first.from_cache and len(list(tmp_path.glob("features-*.pt"))) == 1
    cached = extract_features(model, ds, n_blocks=2, batch_size=8, model_id=model_id, cache_dir=tmp_path,
                              progress=False)
    fresh = extract_features(model, ds, n_blocks=2, batch_size=5, progress=False)
    assert cached.from_cache and not fresh.from_cache
    for key in ("cls", "patch_mean"):
        torch.testing.assert_close(cached.tensors[key], fresh.tensors[key])
    # anything the features depend on changes the key: other weights, other blocks
    other = extract_features(model, ds, n_blocks=1, batch_size=8, model_id=model_id, cache_dir=tmp_path,
                             progress=False)
    assert not other.from_cache
    extract_features(model, ds, n_blocks=2, batch_size=8, model_id={**model_id, "sha256": "x"}, cache_dir=tmp_path,
                     progress=False)
    assert len(list(tmp_path.glob("features-*.pt"))) == 3


@pytest.mark.slow
def test_two_processes_extract_what_one_does(phantom_dir, tmp_path):
    common = ["--pretrained-weights", "random", "--arch", "vit_test", "--train-dataset", f"{phantom_dir}:train",
              "--val-dataset", f"{phantom_dir}:val", "--test-datasets", f"{phantom_dir}:test", "--image-size", 32,
              "--batch-size", 4, "--no-progress"]
    one = run_tool("eval_knn.py", *common, "--output-dir", tmp_path / "one", "--cache-dir", tmp_path / "c1")
    assert one.returncode == 0, one.stderr
    two = run_tool("eval_knn.py", *common, "--output-dir", tmp_path / "two", "--cache-dir", tmp_path / "c2",
                   torchrun=2)
    assert two.returncode == 0, two.stdout + two.stderr
    files1 = sorted(p.name for p in (tmp_path / "c1").iterdir())
    assert files1 == sorted(p.name for p in (tmp_path / "c2").iterdir()) and len(files1) == 3  # same cache keys
    for name in files1:
        a = torch.load(tmp_path / "c1" / name, weights_only=True)
        b = torch.load(tmp_path / "c2" / name, weights_only=True)
        assert a["keys"] == b["keys"]
        for key in a["tensors"]:
            torch.testing.assert_close(a["tensors"][key], b["tensors"][key], atol=1e-5, rtol=1e-5)
    r1, r2 = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("one", "two"))
    assert (r1["world_size"], r2["world_size"]) == (1, 2)
    assert r1["metrics"]["confusion_matrix"] == r2["metrics"]["confusion_matrix"] and r1["n"] == r2["n"]


def test_eval_transform_geometry_channels_and_masks():
    import numpy as np
    from PIL import Image

    image = Image.fromarray(np.full((60, 90), 128, np.uint8))  # wider than tall, mid-gray
    gray = EvalTransform(32, 1)(image)
    assert gray.shape == (1, 32, 32) and torch.allclose(gray, torch.full_like(gray, (128 / 255 - 0.449) / 0.226))
    rgb = EvalTransform(32, 3, resize_mode="center_crop")(image)
    assert rgb.shape == (3, 32, 32)
    torch.testing.assert_close(rgb[:, 0, 0], (128 / 255 - torch.tensor([0.485, 0.456, 0.406])) /
                               torch.tensor([0.229, 0.224, 0.225]))
    mask = np.zeros((60, 90), np.uint8)
    mask[:, 60:] = 255  # the right third
    squashed = EvalTransform(32, 1).mask(mask)  # 90 -> 32 columns: foreground from column 60 * 32 / 90 = 21.3
    assert squashed.shape == (32, 32) and set(squashed.unique().tolist()) == {0, 255}
    assert squashed[:, :21].max() == 0 and squashed[:, 22:].min() == 255
    cropped = EvalTransform(32, 1, resize_mode="center_crop", resize_size=32).mask(mask)  # 32 x 48, centre 32
    assert (cropped[:, :24] == 0).all() and (cropped[:, 24:] == 255).all()  # foreground 32-47 -> 24-31
