"""The downstream monitor's choices, without training: which split it scores, and its patient-level partition."""

from __future__ import annotations

import numpy as np
import pytest

from dinov3_us.configs import load_config
from dinov3_us.errors import ConfigError
from dinov3_us.eval.downstream import monitor_dataset, partition


def cfg(dataset_path: str, *overrides: str):
    return load_config(None, [f"train.dataset_path={dataset_path}", *overrides])


def test_the_monitor_scores_the_first_pools_labelled_val_split_never_a_test_split(phantom_dir, tmp_path):
    spec, note = monitor_dataset(cfg(f"{phantom_dir}:train"))
    assert spec == f"{phantom_dir}:val" and "monitor.dataset=auto" in note
    assert monitor_dataset(cfg(f"{phantom_dir}:train", "monitor.dataset=none"))[0] is None
    explicit = cfg(f"{phantom_dir}:train", f"monitor.dataset={phantom_dir}:train")
    assert monitor_dataset(explicit)[0] == f"{phantom_dir}:train"
    with pytest.raises(ConfigError, match="names a test split"):
        monitor_dataset(cfg(f"{phantom_dir}:train", f"monitor.dataset={phantom_dir}:test"))
    with pytest.raises(ConfigError, match="is not DIR:split"):
        monitor_dataset(cfg(f"{phantom_dir}:train", f"monitor.dataset={tmp_path}/nowhere:val"))
    unlabelled = tmp_path / "pool"
    unlabelled.mkdir()
    (unlabelled / "manifest.json").write_text('{"labels": [], "shards": {"train": [], "val": []}}')
    spec, note = monitor_dataset(cfg(f"{unlabelled}:train"))
    assert spec is None and "has no labelled val split" in note


def test_the_partition_keeps_patients_whole_and_follows_the_label_mix():
    rng = np.random.default_rng(0)
    groups = [f"p{i // 3}" for i in range(240)]  # 80 patients of 3 images
    targets = np.array([(i // 3) % 3 for i in range(240)])
    parts = partition(groups, targets, seed=0)
    assert sorted(np.concatenate(list(parts.values())).tolist()) == list(range(240))
    patients = {p: {groups[i] for i in ix} for p, ix in parts.items()}
    assert not (patients["fit"] & patients["select"]) and not (patients["select"] & patients["score"])
    assert [len(patients[p]) for p in ("fit", "select", "score")] == [40, 20, 20]
    for ix in parts.values():
        counts = np.bincount(targets[ix], minlength=3)
        assert counts.max() - counts.min() <= 3  # each part has the whole's label mix (a third each)
    shuffled = rng.permutation(240)  # the draw depends on the patients, not on the order of the samples
    again = partition([groups[i] for i in shuffled], targets[shuffled], seed=0)
    assert {p: {groups[shuffled[i]] for i in ix} for p, ix in again.items()} == patients
    assert partition(groups, targets, seed=1)["score"].tolist() != parts["score"].tolist()
