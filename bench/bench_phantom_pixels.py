"""How learnable are the phantom's brain planes from the pixels alone? A logistic regression on raw pixels.

The phantom's three brain planes differ only in small, low-contrast inner structures. This bench gives the
ceiling a frozen-feature probe is measured against: a multinomial logistic regression on the raw pixels of
the brain images, resized to the demo's global crop size, patients split 3 : 1 : 1 into train / val / test
(synthetic patient id mod 5), the regularisation C chosen on val, weighted F1 reported on test.

    python bench/bench_phantom_pixels.py            # 1,200 phantom images (600 brain planes), 64 px

JSON in bench/results/phantom_pixel_probe.json.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from stamp import REPO, stamp

from dinov3_us.data.curation.phantom_render import BRAIN_PLANES, plane_of, render


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num-samples", type=int, default=1200, help="phantom images (half are brain planes)")
    p.add_argument("--image-size", type=int, default=96, help="rendered size (the curation default)")
    p.add_argument("--input-size", type=int, default=64, help="pixels per side fed to the regression")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    x, y, patient = [], [], []
    for i in range(0, args.num_samples, 2):  # even indices are the brain planes
        plane, who = plane_of(i)
        img = Image.fromarray(render(args.seed, i, args.image_size)).resize((args.input_size,) * 2, Image.BILINEAR)
        x.append(np.asarray(img, dtype=np.float32).ravel() / 255.0)  # [input_size ** 2]
        y.append(BRAIN_PLANES.index(plane))
        patient.append(int(who[1:]))
    x, y, fold = np.stack(x), np.array(y), np.array(patient) % 5
    part = {"train": fold < 3, "val": fold == 3, "test": fold == 4}
    grid = {}
    for c in (0.001, 0.01, 0.1, 1.0, 10.0):
        clf = LogisticRegression(C=c, max_iter=3000).fit(x[part["train"]], y[part["train"]])
        grid[c] = (f1_score(y[part["val"]], clf.predict(x[part["val"]]), average="weighted"), clf)
    best_c = max(grid, key=lambda c: grid[c][0])
    test = f1_score(y[part["test"]], grid[best_c][1].predict(x[part["test"]]), average="weighted")
    result = {"benchmark": "phantom_pixel_probe", "stamp": stamp(), "num_samples": args.num_samples,
              "image_size": args.image_size, "input_size": args.input_size, "seed": args.seed,
              "n": {k: int(v.sum()) for k, v in part.items()}, "val_weighted_f1": {str(c): round(v[0], 4)
                                                                                 for c, v in grid.items()},
              "chosen_C": best_c, "test_weighted_f1": round(test, 4)}
    out = REPO / "bench" / "results" / "phantom_pixel_probe.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"raw-pixel logistic regression: C = {best_c} (chosen on val), test weighted F1 {test:.3f} "
          f"on {result['n']['test']} images; wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
