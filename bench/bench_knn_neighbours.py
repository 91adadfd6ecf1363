"""What do a backbone's nearest neighbours share on the phantom? Plane, or the patient's gain, head size, pose?

A kNN probe classifies a test image by the train images nearest to it (cosine of the last block's CLS token, as
`dinov3_us.eval.knn`). On the phantom every brain image's nuisances are known (`phantom_render.nuisances`), so
for each test image and its `--neighbours` nearest train images this bench measures how often they have the same
plane (chance 1/3), the same orientation (upside down or not; chance 1/2), and how close their gain, head size,
aspect and tilt are, as the mean absolute difference to the neighbours over the mean absolute difference to
every train image (1.0: the neighbours are no closer than any image; 0.5: half as far). It does this for the
backbone and for a random initialisation of the same architecture (the baseline of the evaluations), on the
labelled train / test splits of a phantom build (`tools/build_dataset.py --source phantom`, as `make demo`).
With `--divide-gain` each image is first divided by its patient's gain (as far as the 8-bit image allows):
whether the neighbours then agree on the plane tells whether gain is what hides it.

    python bench/bench_knn_neighbours.py --weights runs/demo/pretrain/teacher.pth --data runs/demo/data
    python bench/bench_knn_neighbours.py --weights ... --data ... --divide-gain

JSON in bench/results/knn_neighbours.json (or --output).
"""

from __future__ import annotations

import argparse
import json
import re
import sys

import numpy as np
import torch
from stamp import REPO, stamp

from dinov3_us.data.curation.phantom_render import nuisances
from dinov3_us.errors import DataError, DinoUSError
from dinov3_us.eval.backbone import load_eval_backbone, random_like
from dinov3_us.eval.data import EvalDataset, EvalTransform
from dinov3_us.eval.features import embed_batch
from dinov3_us.eval.knn import knn_features

SOURCE = re.compile(r"phantom:seed=(\d+)/index=(\d+)/size=(\d+)")
CONTINUOUS = ("gain", "size", "aspect", "tilt")


def attributes(ds: EvalDataset) -> dict[str, np.ndarray]:
    """{nuisance: [N]} of every image of a phantom split, from the source each sample records."""
    rows = []
    for key, meta in zip(ds.keys, ds.metas):
        m = SOURCE.fullmatch(str(meta.get("file", "")))
        if m is None:
            raise DataError(f"{ds.spec}: sample {key!r} is not a phantom image (its file is {meta.get('file')!r})")
        rows.append(nuisances(*(int(g) for g in m.groups())))
    return {k: np.array([float(r[k]) for r in rows]) for k in rows[0]}


def features(model, ds: EvalDataset, gain: np.ndarray | None) -> torch.Tensor:
    """The kNN representation [N, D] of `ds` (`knn_features`), each image divided by `gain` first when given."""
    images = torch.stack([ds[i][0] for i in range(len(ds))])  # [N, C, S, S], normalised
    if gain is not None:
        mean, std = (torch.tensor(v).view(-1, 1, 1) for v in ds.transform.norm())
        images = ((images * std + mean) / torch.as_tensor(gain, dtype=images.dtype).view(-1, 1, 1, 1) - mean) / std
    with torch.no_grad():
        return knn_features(embed_batch(model, images, n_blocks=1))


def neighbour_agreement(train_x, test_x, train_y, test_y, train_a, test_a, k: int) -> dict:
    """Plane / orientation agreement and relative nuisance distances of each test image's k nearest train images."""
    sims = torch.nn.functional.normalize(test_x, dim=1) @ torch.nn.functional.normalize(train_x, dim=1).T  # [Nq, Nt]
    nn = sims.topk(k, dim=1).indices.numpy()  # [Nq, k]
    out = {"same_plane": float((train_y[nn] == test_y[:, None]).mean()),
           "same_orientation": float((train_a["upside_down"][nn] == test_a["upside_down"][:, None]).mean())}
    for key in CONTINUOUS:
        near = np.abs(train_a[key][nn] - test_a[key][:, None]).mean()
        anywhere = np.abs(train_a[key][None, :] - test_a[key][:, None]).mean()
        out[f"{key}_distance_ratio"] = float(near / anywhere)
    return {k: round(v, 4) for k, v in out.items()}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", required=True, help="a teacher.pth, an exported backbone or a run folder")
    p.add_argument("--data", required=True, help="a phantom build (its train and test splits are read)")
    p.add_argument("--image-size", type=int, default=64, help="the evaluation's input size (make demo: 64)")
    p.add_argument("--neighbours", type=int, default=10)
    p.add_argument("--divide-gain", action="store_true", help="divide each image by its patient's gain first")
    p.add_argument("--output", default=str(REPO / "bench" / "results" / "knn_neighbours.json"))
    args = p.parse_args()
    try:
        backbone = load_eval_backbone(args.weights, img_size=args.image_size)
        transform = EvalTransform(image_size=args.image_size, in_chans=backbone.model.patch_embed.proj.in_channels)
        splits = {s: EvalDataset(f"{args.data}:{s}", transform) for s in ("train", "test")}
        attrs = {s: attributes(ds) for s, ds in splits.items()}
    except DinoUSError as err:  # a weights file or a data folder that is not what this bench reads
        print(f"error: {err}", file=sys.stderr)
        return 2
    targets = {s: np.asarray(ds.targets) for s, ds in splits.items()}
    rows = {}
    for name, model in (("backbone", backbone.model), ("random_init", random_like(backbone).model)):
        x = {s: features(model, ds, attrs[s]["gain"] if args.divide_gain else None) for s, ds in splits.items()}
        rows[name] = neighbour_agreement(x["train"], x["test"], targets["train"], targets["test"], attrs["train"],
                                         attrs["test"], args.neighbours)
        print(f"{name:12} " + "  ".join(f"{k} {v:.3f}" for k, v in rows[name].items()))
    result = {"benchmark": "knn_neighbours", "stamp": stamp(), "command": "python " + " ".join(sys.argv),
              "weights": str(args.weights), "weights_sha256": backbone.sha256, "data": args.data,
              "n": {s: len(ds) for s, ds in splits.items()}, "neighbours": args.neighbours,
              "divide_gain": args.divide_gain, "chance": {"same_plane": 1 / 3, "same_orientation": 0.5},
              "rows": rows}
    with open(args.output, "w") as f:
        f.write(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
