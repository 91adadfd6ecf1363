"""`phantom`: SYNTHETIC fetal-ultrasound-like images from `phantom_render` (no clinical data, no download).

The default data of the README demo and of tests: `--num-samples` images (default 96) of
`--image-size` pixels (default 96), half of them brain planes in three labelled classes of equal size
(thalami / ventricles / cerebellum-like inner structures, one of each per synthetic patient), half
coarse planes (abdomen, femur, heart, cervix) in the `unlabelled` split, as a pool of public fetal
ultrasound mixes varied planes with look-alike brain planes. The brain planes' splits are drawn by
patient: `--val-fraction` / `--test-fraction` (default 15% / 15%), seed `--seed`, the rest train.
Every image is a pure function of (seed, index, size), so builds are reproducible.
"""

from __future__ import annotations

from functools import partial

from dinov3_us.data.curation.phantom_render import CLASSES, plane_of, render_png
from dinov3_us.data.curation.records import Record, safe_key
from dinov3_us.data.curation.sources.common import SourcePlan, reject, require_task
from dinov3_us.data.curation.splits import assign_by_group
from dinov3_us.errors import DataError

NAME = "phantom"
TASKS = ("planes",)
DEFAULT_TASK = "planes"
# Generated images have no overlays and no black frame to crop; near-duplicates are impossible by design.
PREP_DEFAULTS = {"grayscale": True, "resize": 256, "crop_sector": False, "mask_text": False, "dedup": False}
SPLIT_FRACTIONS = {"val": 0.15, "test": 0.15}
DEFAULT_NUM_SAMPLES = 96
DEFAULT_IMAGE_SIZE = 96


def read(cfg, skips) -> SourcePlan:
    """Plan `cfg.num_samples` synthetic records (nothing is rendered until the images are processed)."""
    task = require_task(cfg, TASKS, DEFAULT_TASK)
    reject(cfg, "root", "csv")
    n = DEFAULT_NUM_SAMPLES if cfg.num_samples is None else cfg.num_samples
    size = DEFAULT_IMAGE_SIZE if cfg.image_size is None else cfg.image_size
    if n < 1:
        raise DataError(f"--num-samples must be >= 1, got {n}")
    if not 32 <= size <= 1024:
        raise DataError(f"--image-size must be in [32, 1024] pixels, got {size}")
    name = cfg.name or NAME
    records = []
    for i in range(n):
        plane, patient = plane_of(i)
        meta = {
            "source": name,
            "task": task,
            "patient": patient,
            "plane": plane,
            "synthetic": True,
            "file": f"phantom:seed={cfg.seed}/index={i}/size={size}",
        }
        generator = partial(render_png, cfg.seed, i, size)
        key = safe_key(name, f"{i:06d}")
        labelled = plane in CLASSES  # the coarse planes are pretraining data only
        records.append(Record(key, "train" if labelled else "unlabelled", plane if labelled else None, patient,
                              generator=generator, meta=meta))
    val, test = cfg.fraction("val", SPLIT_FRACTIONS["val"]), cfg.fraction("test", SPLIT_FRACTIONS["test"])
    assign_by_group(records, {"val": val, "test": test}, cfg.seed, label_order=CLASSES)
    policy = (f"synthetic; brain planes by synthetic patient: {val:.0%} val, {test:.0%} test, seed {cfg.seed}; "
              "coarse planes -> unlabelled")
    extra = {"synthetic": True, "num_samples": n, "image_size": size}
    return SourcePlan(records, task, list(CLASSES), policy, extra)
