"""The README's first command (`make demo`): what the pipeline can run end to end today.

Current stage (issue 2, foundation): resolve and write the run config, build the DINOv3 ViT-S/16
backbone from it, run `forward_features` and `get_intermediate_layers` on a real fetal-head
ultrasound image (HC18, from ../shared/data when present; otherwise a synthetic image, said so), and
write `OUT/config.yaml`, `OUT/demo.json` (shapes, timing) and `OUT/patch_pca.png` (the first three
principal components of the patch tokens as RGB beside the input). Later stages extend this to
curate -> pretrain -> convert -> evaluate.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dinov3_us.configs import load_config, write_config  # noqa: E402
from dinov3_us.errors import DinoUSError  # noqa: E402
from dinov3_us.models import build_model_from_cfg  # noqa: E402

logger = logging.getLogger("dinov3_us")
SHARED_HC18 = REPO.parent / "shared" / "data" / "hc18" / "training_set"


def load_image(size: int) -> tuple[np.ndarray, str]:
    """A grayscale image in [0, 1] of shape [size, size] and where it came from."""
    real = sorted(SHARED_HC18.glob("*HC.png"))
    if real:
        img = Image.open(real[0]).convert("L")
        source = str(real[0])
    else:
        logger.warning("%s is absent: using a synthetic image", SHARED_HC18)
        yy, xx = np.mgrid[-1:1:size * 1j, -1:1:size * 1j]
        ring = np.exp(-((np.sqrt((xx / 0.8) ** 2 + (yy / 0.6) ** 2) - 1) ** 2) / 0.005)
        img = Image.fromarray((255 * np.clip(ring + 0.1 * np.random.default_rng(0).random((size, size)), 0, 1))
                              .astype(np.uint8))
        source = "synthetic ellipse"
    img = img.resize((size, size), Image.BICUBIC)
    return np.asarray(img, dtype=np.float32) / 255.0, source


def pca_rgb(tokens: torch.Tensor, grid: tuple[int, int]) -> np.ndarray:
    """[HW, D] patch tokens -> [h, w, 3] uint8 image of their first three principal components."""
    centred = tokens - tokens.mean(0, keepdim=True)
    _, _, v = torch.pca_lowrank(centred, q=3, center=False)
    comp = centred @ v[:, :3]  # [HW, 3]
    comp = (comp - comp.min(0).values) / (comp.max(0).values - comp.min(0).values + 1e-8)
    return (255 * comp.reshape(*grid, 3).numpy()).astype(np.uint8)


def main(argv: list[str] | None = None) -> int:
    """Run the demo; returns the process exit code."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default="runs/demo")
    parser.add_argument("overrides", nargs="*", help="config overrides section.key=value")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    out = Path(args.output_dir)
    try:
        cfg = load_config(overrides=["student.arch=vit_small", "student.n_storage_tokens=4", *args.overrides])
    except DinoUSError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    write_config(cfg, out)
    size = cfg.crops.global_crops_size
    teacher, dim = build_model_from_cfg(cfg, only_teacher=True)
    teacher.init_weights()
    teacher.eval()
    gray, source = load_image(size)
    mean, std = float(np.mean(cfg.crops.rgb_mean)), float(np.mean(cfg.crops.rgb_std))
    x = torch.from_numpy((gray - mean) / std)[None, None]  # [1, 1, S, S]
    x = x.expand(-1, cfg.student.in_chans, -1, -1)  # grayscale repeated to RGB unless in_chans=1
    start = time.perf_counter()
    with torch.no_grad():
        feats = teacher.forward_features(x)
        inter = teacher.get_intermediate_layers(x, n=4, return_class_token=True)
    seconds = time.perf_counter() - start
    grid = (size // cfg.student.patch_size, size // cfg.student.patch_size)
    pca = Image.fromarray(pca_rgb(feats["x_norm_patchtokens"][0], grid)).resize((size, size), Image.NEAREST)
    panel = Image.new("RGB", (2 * size, size))
    panel.paste(Image.fromarray((gray * 255).astype(np.uint8)).convert("RGB"), (0, 0))
    panel.paste(pca, (size, 0))
    panel.save(out / "patch_pca.png")
    summary = {
        "image": source,
        "arch": cfg.student.arch,
        "embed_dim": dim,
        "input_shape": list(x.shape),
        "shapes": {k: list(v.shape) for k, v in feats.items() if isinstance(v, torch.Tensor)},
        "intermediate_layers": len(inter),
        "forward_seconds": round(seconds, 3),
        "weights": "random init (pretraining lands with later stages)",
    }
    (out / "demo.json").write_text(json.dumps(summary, indent=2))
    logger.info("ViT-S/16 forward on %s: %s in %.2f s; wrote %s", source, summary["shapes"], seconds, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
