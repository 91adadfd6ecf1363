"""The synthetic phantom source: deterministic, balanced, resumable, identical for any number of workers."""

import hashlib
import json

import numpy as np
import pytest
from curation_testutil import build, check_consistent, decode, digest

from dinov3_us.data.curation import phantom_render, writer
from dinov3_us.data.curation.phantom_render import CLASSES, COARSE_PLANES, nuisances, plane_of, render, render_png
from dinov3_us.errors import DataError


def test_render_is_a_pure_function_of_seed_index_size():
    a, b = render_png(3, 5, 64), render_png(3, 5, 64)
    assert hashlib.sha1(a).hexdigest() == hashlib.sha1(b).hexdigest()
    assert render_png(4, 5, 64) != a
    image = render(3, 5, 64)
    assert image.shape == (64, 64) and image.dtype == np.uint8
    assert image[0, 0] == 0 and image.max() > 100  # black outside the fan, bright skull inside


def test_brain_planes_differ_only_in_inner_structures_coarse_planes_in_large_ones():
    """Averaged over seeds, the brain planes' means differ by little compared with the image itself; a coarse
    plane's mean differs from a brain plane's by more than the brain planes differ from each other."""
    def mean_image(index):
        return np.mean([render(s, index, 64).astype(float) for s in range(8)], axis=0)

    assert [plane_of(i)[0] for i in range(8)] == ["thalami", "abdomen", "ventricles", "femur", "cerebellum",
                                                   "heart", "thalami", "cervix"]
    brain = [mean_image(2 * c) for c in range(3)]  # thalami, ventricles, cerebellum
    diffs = [np.abs(brain[i] - brain[j]).mean() for i, j in ((0, 1), (0, 2), (1, 2))]
    assert all(0 < d < 0.25 * brain[0].mean() for d in diffs)
    coarse = [mean_image(2 * c + 1) for c in range(4)]  # abdomen, femur, heart, cervix
    assert min(np.abs(c - brain[0]).mean() for c in coarse) > max(diffs)


def test_nuisances_are_what_render_draws(monkeypatch):
    """`nuisances` reports the pose `render` draws the head at (a pass-through spy on the head), the patient's
    values are shared by its three planes, and asking for a coarse plane is an error."""
    seen = []
    real_head = phantom_render._head
    monkeypatch.setattr(phantom_render, "_head", lambda pose, *a: seen.append(pose) or real_head(pose, *a))
    for index in (0, 2, 4, 6, 10):
        render(5, index, 64)
        n, pose = nuisances(5, index, 64), seen[-1]
        assert (n["size"], n["aspect"], n["tilt"], n["upside_down"]) == (
            pose["a"] / 64, pose["b"] / pose["a"], pose["tilt"], pose["upside_down"])
    patient0 = [nuisances(5, i, 64) for i in (0, 2, 4)]  # thalami, ventricles, cerebellum of patient 0
    assert all((n["gain"], n["size"], n["aspect"]) == (patient0[0]["gain"], patient0[0]["size"], patient0[0]["aspect"])
               for n in patient0)
    assert nuisances(5, 6, 64)["gain"] != patient0[0]["gain"]  # patient 1
    assert {nuisances(5, i, 64)["upside_down"] for i in range(0, 40, 2)} == {True, False}
    with pytest.raises(ValueError, match="abdomen"):
        nuisances(5, 1, 64)


def test_phantom_build_is_deterministic_balanced_and_readable(tmp_path):
    m1 = build(tmp_path / "a", source="phantom", num_samples=30, image_size=48)
    m2 = build(tmp_path / "b", source="phantom", num_samples=30, image_size=48)
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    assert m1["counts"] == m2["counts"] and m1["synthetic"] is True
    totals = {c: sum(t.get(c, 0) for t in m1["counts"].values()) for c in CLASSES}
    assert totals == {c: 5 for c in CLASSES}  # the even indices; the odd ones are coarse planes
    assert m1["labels"] == list(CLASSES) and set(m1["counts"]) == {"train", "val", "test", "unlabelled"}
    samples = check_consistent(tmp_path / "a")
    meta = samples["train"][0]["meta"]
    assert meta["synthetic"] is True and meta["source"] == "phantom" and meta["size"] == [48, 48]
    assert meta["plane"] == meta["label"] in CLASSES
    coarse = samples["unlabelled"]
    assert len(coarse) == 15 and all(x["meta"]["plane"] in COARSE_PLANES and x["meta"].get("label") is None
                                     for x in coarse)
    assert decode(samples["train"][0]["png"]).shape == (48, 48)
    other = build(tmp_path / "c", source="phantom", num_samples=30, image_size=48, seed=7)
    assert digest(tmp_path / "c") != digest(tmp_path / "a") and other["num_samples"] == 30


def test_workers_do_not_change_the_bytes(tmp_path):
    build(tmp_path / "one", source="phantom", num_samples=18, image_size=40, shard_size=4)
    build(tmp_path / "two", source="phantom", num_samples=18, image_size=40, shard_size=4, workers=2)
    assert digest(tmp_path / "one") == digest(tmp_path / "two")
    assert len(digest(tmp_path / "one")) > 3


def test_interrupted_build_resumes_to_identical_shards(tmp_path, monkeypatch, caplog):
    args = dict(source="phantom", num_samples=24, image_size=40, shard_size=3)
    build(tmp_path / "clean", **args)
    calls = {"n": 0}
    original = writer.Journal.append

    def crash_after_two(self, entry):
        original(self, entry)
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(writer.Journal, "append", crash_after_two)
    with pytest.raises(KeyboardInterrupt):
        build(tmp_path / "run", **args)
    monkeypatch.setattr(writer.Journal, "append", original)
    assert not (tmp_path / "run" / "manifest.json").exists()
    assert (tmp_path / "run" / writer.JOURNAL).exists()
    with caplog.at_level("INFO", logger="dinov3_us"):
        manifest = build(tmp_path / "run", **args)
    assert "resuming" in caplog.text and "after 2 finished shard(s)" in caplog.text
    assert digest(tmp_path / "run") == digest(tmp_path / "clean")
    assert json.loads((tmp_path / "clean" / "manifest.json").read_text())["counts"] == manifest["counts"]
    assert not (tmp_path / "run" / writer.JOURNAL).exists()
    with pytest.raises(DataError, match="other arguments"):
        build(tmp_path / "run", **{**args, "seed": 1})


def test_bad_phantom_arguments():
    with pytest.raises(DataError, match="--image-size"):
        build("/tmp/unused-phantom", source="phantom", image_size=8)
    with pytest.raises(DataError, match="--task 'brain-planes'"):
        build("/tmp/unused-phantom", source="phantom", task="brain-planes")
