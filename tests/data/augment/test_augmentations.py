"""DataAugmentationDINO: output structure, channels, determinism, config reading, a real HC18 image."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from dinov3_us.data.augment import DataAugmentationDINO, default_augment_config
from dinov3_us.data.augment.image_ops import to_float_tensor
from dinov3_us.data.augment.sector import Sector, SectorResizedCrop
from dinov3_us.data.augment.transforms import RandomResizedCrop
from dinov3_us.errors import ConfigError

OFF = {k: 0.0 for k in default_augment_config() if k.endswith("_p") or k.startswith("blur_p")}


def fan_pil(size: int = 64, rgb: bool = False) -> Image.Image:
    """A synthetic 8-bit sector scan: a textured fan on black."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
    radius, angle = np.hypot(ys + 4, xs - size / 2), np.degrees(np.arctan2(xs - size / 2, ys + 4))
    fan = (radius > 10) & (radius < size) & (np.abs(angle) < 35)
    pixels = (np.random.default_rng(0).uniform(40, 220, (size, size)) * fan).astype(np.uint8)
    image = Image.fromarray(pixels, "L")
    return image.convert("RGB") if rgb else image


def small_aug(**kwargs) -> DataAugmentationDINO:
    args = {"global_crops_scale": (0.32, 1.0), "local_crops_scale": (0.05, 0.32), "local_crops_number": 4,
            "global_crops_size": 32, "local_crops_size": 16}
    return DataAugmentationDINO(**{**args, **kwargs})


def all_tensors(output: dict) -> list:
    return [t for key in ("global_crops", "global_crops_teacher", "local_crops") for t in output[key]]


@pytest.mark.parametrize("in_chans, rgb_input", [(1, False), (1, True), (3, False), (3, True)])
def test_output_structure_and_channels(in_chans, rgb_input):
    out = small_aug(in_chans=in_chans)(fan_pil(rgb=rgb_input), 0)
    assert len(out["global_crops"]) == 2 and len(out["local_crops"]) == 4 and out["offsets"] == ()
    assert "gram_teacher_crops" not in out
    for crop in out["global_crops"] + out["global_crops_teacher"]:
        assert crop.shape == (in_chans, 32, 32) and crop.dtype == torch.float32 and torch.isfinite(crop).all()
    for crop in out["local_crops"]:
        assert crop.shape == (in_chans, 16, 16)
    if in_chans == 3 and not rgb_input:  # grayscale repeated after the augmentations
        g = out["global_crops"][0] * torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
        g = g + torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
        assert torch.allclose(g[0], g[1], atol=1e-5) and torch.allclose(g[1], g[2], atol=1e-5)


def test_same_seed_same_crops_different_seed_different():
    aug, image = small_aug(), fan_pil()
    a, b, c = aug(image, 123), aug(image, 123), aug(image, 124)
    assert all(torch.equal(x, y) for x, y in zip(all_tensors(a), all_tensors(b)))
    assert not all(torch.equal(x, y) for x, y in zip(all_tensors(a), all_tensors(c)))
    t1, t2 = aug(image, torch.Generator().manual_seed(9)), aug(image, torch.Generator().manual_seed(9))
    assert all(torch.equal(x, y) for x, y in zip(all_tensors(t1), all_tensors(t2)))


def test_gram_teacher_crops_and_local_subset_offsets():
    image = fan_pil()
    for no_distortions in (False, True):
        out = small_aug(gram_teacher_crops_size=48, gram_teacher_no_distortions=no_distortions)(image, 0)
        assert [g.shape for g in out["gram_teacher_crops"]] == [(1, 48, 48)] * 2
        assert out["global_crops"][0].shape == (1, 32, 32)
    out = small_aug(local_crops_subset_of_global_crops=True, patch_size=8)(image, 0)
    assert len(out["local_crops"]) == 4 and all(c.shape == (1, 16, 16) for c in out["local_crops"])
    assert all(rx % 8 == 0 and ry % 8 == 0 and rx + 16 <= 32 and ry + 16 <= 32 for rx, ry in out["offsets"])
    teacher = small_aug(teacher_no_color_jitter=True)(image, 0)
    assert teacher["global_crops_teacher"][0].shape == (1, 32, 32)


def test_gray_normalisation_uses_the_mean_of_the_rgb_statistics():
    flat = Image.fromarray(np.full((40, 40), round(0.449 * 255), np.uint8), "L")
    out = small_aug(ultrasound={**OFF, "sector_crop": False})(flat, 0)
    assert all(float(c.abs().max()) < 0.02 for c in all_tensors(out))
    custom = small_aug(ultrasound={**OFF, "gray_mean": 0.0, "gray_std": 1.0, "sector_crop": False})(flat, 0)
    assert abs(float(custom["global_crops"][0].mean()) - round(0.449 * 255) / 255) < 0.01


def test_from_config_reads_crops_augment_and_student():
    cfg = {"crops": {"global_crops_size": 32, "local_crops_size": 16, "local_crops_number": 2,
                     "horizontal_flips": False, "gram_teacher_crops_size": None},
           "student": {"in_chans": 3, "patch_size": 8}, "augment": default_augment_config()}
    aug = DataAugmentationDINO.from_config(cfg)
    assert aug.in_chans == 3 and aug.flip_p == 0.0 and aug.patch_size == 8
    out = aug(fan_pil(), 0)
    assert out["global_crops"][0].shape == (3, 32, 32) and len(out["local_crops"]) == 2
    assert DataAugmentationDINO.from_config({"crops": cfg["crops"]}, in_chans=1).in_chans == 1
    with pytest.raises(ConfigError, match="augment.speckle_prob"):
        DataAugmentationDINO.from_config({**cfg, "augment": {"speckle_prob": 0.1}})
    with pytest.raises(ConfigError, match="crops.global_crops_size"):
        DataAugmentationDINO.from_config({"crops": {"global_crops_size": 0}})
    with pytest.raises(ConfigError, match="crops.global_crops_scale"):
        DataAugmentationDINO.from_config({"crops": {"global_crops_scale": [0.9, 0.2]}})
    with pytest.raises(ConfigError, match="student.in_chans"):
        DataAugmentationDINO.from_config({"student": {"in_chans": 2}})
    with pytest.raises(ConfigError, match="augment.tgc_p"):
        DataAugmentationDINO.from_config({"augment": {"tgc_p": 2.0}})


def test_real_hc18_image(data_dir):
    paths = sorted((data_dir / "hc18" / "training_set").glob("*HC.png"))
    if not paths:
        pytest.skip(f"no HC18 images under {data_dir / 'hc18' / 'training_set'}")
    image = Image.open(paths[0])
    out = small_aug()(image, 0)
    assert all(t.shape[0] == 1 and torch.isfinite(t).all() for t in all_tensors(out))
    black_plain, black_aware = [], []
    for path in paths[:3]:
        frame = to_float_tensor(Image.open(path))  # [1, H, W]
        sector = Sector.from_image(frame)
        assert 0.3 < sector.mask.mean() < 0.99
        # background: no pixel above 2/255 within 4 px (dark fluid inside the fan has some speckle)
        black = (F.max_pool2d(frame[None], 9, 1, 4)[0, 0] < 2 / 255).numpy()
        height, width = black.shape
        plain, aware = RandomResizedCrop(32, (0.05, 0.32)), SectorResizedCrop(32, (0.05, 0.32))
        rng_p, rng_a = np.random.default_rng(0), np.random.default_rng(0)
        for _ in range(100):
            t, left, h, w = plain.sample_box(height, width, rng_p)
            black_plain.append(black[t : t + h, left : left + w].mean())
            t, left, h, w = aware.sample_sector_box(sector, rng_a)
            black_aware.append(black[t : t + h, left : left + w].mean())
    assert np.mean(black_aware) < 0.6 * np.mean(black_plain)
