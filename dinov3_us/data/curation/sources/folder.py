"""Any folder tree of images: class = first-level sub-folder name, or unlabelled.

`--folder-labels auto` (default) treats the tree as labelled when every image lies in a sub-folder,
`subfolder` forces that (images at the top level are then counted as `no_class_folder`), `none`
makes every image unlabelled. Labelled images go to `train`, minus `--val-fraction` /
`--test-fraction` (default 0) drawn per group and stratified by class; unlabelled images form the
`unlabelled` split. `--group-regex` extracts a patient id from each relative path (its first
capture group, or the whole match) so that the split keeps patients together; without it every
image is its own group.
"""

from __future__ import annotations

import re

from dinov3_us.data.curation.records import Record, natural_key, safe_key
from dinov3_us.data.curation.sources.common import (
    REAL_SCAN_DEFAULTS,
    SourcePlan,
    list_images,
    reject,
    require_root,
    require_task,
)
from dinov3_us.data.curation.splits import assign_by_group
from dinov3_us.errors import DataError

NAME = "folder"
TASKS: tuple[str, ...] = ()
DEFAULT_TASK = None
PREP_DEFAULTS = REAL_SCAN_DEFAULTS
SPLIT_FRACTIONS = {"val": 0.0, "test": 0.0}
LABEL_MODES = ("auto", "subfolder", "none")


def read(cfg, skips) -> SourcePlan:
    """Plan one record per image file under `cfg.root`."""
    root = require_root(cfg)
    task = require_task(cfg, TASKS, DEFAULT_TASK)
    reject(cfg, "csv", "num_samples", "image_size")
    if cfg.folder_labels not in LABEL_MODES:
        raise DataError(f"--folder-labels must be one of {LABEL_MODES}, got {cfg.folder_labels!r}")
    try:
        pattern = re.compile(cfg.group_regex) if cfg.group_regex else None
    except re.error as exc:
        raise DataError(f"--group-regex {cfg.group_regex!r} is not a valid regular expression ({exc})") from exc
    name = cfg.name or NAME
    paths = list_images(root, recursive=True)
    if not paths:
        raise DataError(f"{root}: no image files ({', '.join(('.png', '.jpg', '...'))}) found under it")
    nested = [len(p.relative_to(root).parts) > 1 for p in paths]
    labelled = cfg.folder_labels == "subfolder" or (cfg.folder_labels == "auto" and all(nested))

    records = []
    for path, in_folder in zip(paths, nested):
        relative = path.relative_to(root).as_posix()
        if labelled and not in_folder:
            skips.add("no_class_folder", str(path), "labelled tree: images must lie in a class sub-folder")
            continue
        group = relative
        if pattern is not None:
            match = pattern.search(relative)
            if match is None:
                skips.add("group_regex_no_match", str(path), f"--group-regex {cfg.group_regex!r}")
                continue
            group = match.group(1) if pattern.groups else match.group(0)
        label = path.relative_to(root).parts[0] if labelled else None
        meta = {"source": name, "task": task, "file": relative, "patient": group if pattern else None}
        split = "train" if labelled else "unlabelled"
        records.append(Record(safe_key(name, relative.rsplit(".", 1)[0]), split, label, group, str(path), meta=meta))

    labels = sorted({r.label for r in records if r.label is not None}, key=natural_key)
    val, test = cfg.fraction("val", SPLIT_FRACTIONS["val"]), cfg.fraction("test", SPLIT_FRACTIONS["test"])
    if labelled and (val or test):
        assign_by_group(records, {"val": val, "test": test}, cfg.seed, label_order=labels)
        unit = "--group-regex group" if pattern else "image"
        policy = f"per {unit}: {val:.0%} val, {test:.0%} test, stratified by class, seed {cfg.seed}"
    else:
        policy = "all labelled images -> train" if labelled else "all images -> unlabelled"
    return SourcePlan(records, task, labels, policy, {"labelled": labelled})
