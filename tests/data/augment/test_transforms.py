"""Generic and ultrasound transforms, the scan-sector estimate and sector-aware crops."""

import math

import numpy as np
import pytest
import torch

from dinov3_us.data.augment import ultrasound as us
from dinov3_us.data.augment.image_ops import to_float_tensor
from dinov3_us.data.augment.sector import Sector, SectorResizedCrop, _largest_component
from dinov3_us.data.augment.transforms import (
    ColorJitter,
    GaussianBlur,
    RandomHorizontalFlip,
    RandomResizedCrop,
    RandomSolarize,
)
from dinov3_us.data.augment.ultrasound_augment import UltrasoundAugment
from dinov3_us.data.rng import as_rng
from dinov3_us.errors import ConfigError


def fan_image(size: int = 96, seed: int = 0) -> tuple[torch.Tensor, np.ndarray]:
    """A synthetic sector scan [1, H, W] (textured fan on black) and its true fan mask [H, W]."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
    dy, dx = ys + 0.05 * size, xs - size / 2  # apex just above the top centre
    radius, angle = np.hypot(dy, dx), np.degrees(np.arctan2(dx, dy))
    fan = (radius > 0.2 * size) & (radius < 1.0 * size) & (np.abs(angle) < 30)
    texture = np.random.default_rng(seed).uniform(0.2, 0.8, (size, size))
    return torch.from_numpy((texture * fan).astype(np.float32))[None], fan


def test_as_rng_accepts_seeds_and_generators():
    assert as_rng(3).random() == as_rng(3).random()
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert as_rng(g1).random() == as_rng(g2).random()
    torch.manual_seed(7)
    a = as_rng(None).random()
    torch.manual_seed(7)
    assert as_rng(None).random() == a
    with pytest.raises(ConfigError):
        as_rng("seed")


@pytest.mark.parametrize("channels", [1, 3])
def test_random_resized_crop_shapes_and_determinism(channels):
    img = torch.rand(channels, 60, 80)
    crop = RandomResizedCrop(24, scale=(0.2, 0.6))
    a, b, c = crop(img, 1), crop(img, 1), crop(img, 2)
    assert a.shape == (channels, 24, 24) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
    rng = np.random.default_rng(0)
    for _ in range(50):
        top, left, h, w = crop.sample_box(60, 80, rng)
        assert 0 <= top and top + h <= 60 and 0 <= left and left + w <= 80
        assert 0.15 < h * w / (60 * 80) < 0.65 and 0.7 < w / h < 1.45


def test_flip_jitter_blur_solarize():
    img = torch.rand(1, 32, 32)
    assert torch.equal(RandomHorizontalFlip(1.0)(img, 0), img.flip(-1))
    assert torch.equal(RandomHorizontalFlip(0.0)(img, 0), img)
    assert torch.equal(ColorJitter(p=0.0)(img, 0), img)
    jittered = ColorJitter(p=1.0)(img, 0)
    assert jittered.shape == (1, 32, 32) and not torch.equal(jittered, img)
    assert ColorJitter(p=1.0)(torch.rand(3, 8, 8), 0).shape == (3, 8, 8)
    blurred = GaussianBlur(p=1.0, radius_min=1.5, radius_max=2.0)(img, 0)
    assert blurred.shape == img.shape and blurred.var() < 0.5 * img.var()
    assert abs(float(blurred.mean() - img.mean())) < 0.02
    assert torch.equal(GaussianBlur(p=0.0)(img, 0), img)
    solarized = RandomSolarize(0.5, p=1.0)(img, 0)
    assert torch.equal(solarized, torch.where(img >= 0.5, 1 - img, img))
    with pytest.raises(ConfigError, match="augment.color_jitter_p"):
        ColorJitter(p=1.5)


def test_to_float_tensor_formats():
    gray = np.full((10, 12), 255, np.uint8)
    assert to_float_tensor(gray).shape == (1, 10, 12) and float(to_float_tensor(gray).max()) == 1.0
    assert to_float_tensor(np.zeros((10, 12, 4), np.uint8)).shape == (3, 10, 12)


def test_sector_estimate_matches_the_fan():
    img, fan = fan_image(96)
    mask = Sector.from_image(img).mask
    iou = (mask & fan).sum() / (mask | fan).sum()
    assert iou > 0.85
    assert Sector.from_image(torch.zeros(1, 40, 40)).mask.all()  # nothing found: the whole frame
    assert Sector.from_image(torch.rand(1, 40, 40) * 0.5 + 0.3).mask.mean() > 0.95
    depth = Sector.from_mask(fan).depth_of_rows((10, 0, 50, 40), 20)
    assert np.all(np.diff(depth) > 0) and depth.min() >= 0 and depth.max() <= 1


def _bfs_largest(on: np.ndarray) -> np.ndarray:
    """Reference: breadth-first search from each unlabelled on-pixel in raster order, 4-neighbours."""
    labels, best, best_size = np.zeros(on.shape, int), 0, 0
    for start in zip(*np.nonzero(on)):
        if labels[start]:
            continue
        label = labels.max() + 1
        labels[start], queue, size = label, [start], 0
        while queue:
            y, x = queue.pop()
            size += 1
            for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= ny < on.shape[0] and 0 <= nx < on.shape[1] and on[ny, nx] and not labels[ny, nx]:
                    labels[ny, nx] = label
                    queue.append((ny, nx))
        if size > best_size:
            best, best_size = label, size
    return labels == best if best_size else on


def test_largest_component_is_4_connected_and_breaks_ties_in_raster_order():
    diagonal = np.eye(4, dtype=bool)  # 4 components of one pixel: the first (top left) wins
    assert np.array_equal(_largest_component(diagonal), np.pad([[True]], ((0, 3), (0, 3))))
    two = np.zeros((3, 7), bool)
    two[:, 0:2] = two[:, 4:6] = True  # two equal components: the left one
    assert np.array_equal(_largest_component(two), np.pad(np.ones((3, 2), bool), ((0, 0), (0, 5))))
    empty = np.zeros((5, 5), bool)
    assert np.array_equal(_largest_component(empty), empty)
    rng = np.random.default_rng(0)
    for density in (0.3, 0.5, 0.6, 0.8):
        on = rng.random((43, 64)) < density
        assert np.array_equal(_largest_component(on), _bfs_largest(on)), density


def test_sector_aware_crops_avoid_the_black_background():
    img, fan = fan_image(96)
    sector = Sector.from_image(img)
    plain = RandomResizedCrop(32, scale=(0.1, 0.6))
    aware = SectorResizedCrop(32, scale=(0.1, 0.6), min_inside=0.9, max_tries=20)
    rng_plain, rng_aware = np.random.default_rng(0), np.random.default_rng(0)
    black_plain, black_aware = [], []
    for _ in range(200):
        t, left, h, w = plain.sample_box(96, 96, rng_plain)
        black_plain.append(1 - fan[t : t + h, left : left + w].mean())
        t, left, h, w = aware.sample_sector_box(sector, rng_aware)
        black_aware.append(1 - fan[t : t + h, left : left + w].mean())
    assert np.mean(black_aware) < 0.1 and np.mean(black_aware) < 0.3 * np.mean(black_plain)
    a, b = aware(img, 3), aware(img, 3, sector)
    assert a.shape == (1, 32, 32) and torch.equal(a, b) and not torch.equal(a, aware(img, 4))


def test_tgc_and_attenuation_follow_depth():
    img = torch.full((1, 40, 20), 0.4)
    depth = (np.arange(40) + 0.5) / 40
    out = us.time_gain_compensation(img, depth, [-6.0, 0.0, 6.0])  # gain slope > 0
    assert out[0, -1].mean() > 0.7 and out[0, 0].mean() < 0.25 and abs(float(out[0, 20].mean()) - 0.4) < 0.03
    att = us.depth_attenuation(img, depth, 6.0)
    assert float(att[0, 0].mean()) > 0.39 and abs(float(att[0, -1].mean()) - 0.2) < 0.01
    assert torch.all(att[0, 1:].mean(1) <= att[0, :-1].mean(1))


def test_speckle_keeps_the_mean_and_raises_local_variance():
    img = torch.full((1, 64, 64), 0.4)
    out = us.speckle_noise(img, 0.2, np.random.default_rng(0))
    assert abs(float(out.mean()) - 0.4) < 0.02
    assert float(out.var()) > 1e-3 > float(img.var())
    black = us.speckle_noise(torch.zeros(1, 8, 8), 0.3, np.random.default_rng(0))
    assert float(black.abs().max()) == 0.0  # multiplicative: the background stays black


def test_acoustic_shadow_darkens_only_below_the_reflector():
    img = torch.full((1, 60, 60), 0.5)
    out = us.acoustic_shadow(img, top=20, center=30.0, half_width=6.0, strength=0.7)
    assert torch.equal(out[:, :20], img[:, :20])  # above the reflector: unchanged
    assert float(out[0, 40:, 28:33].mean()) < 0.25  # in the shadow core: dark
    assert torch.allclose(out[0, 40:, :15], img[0, 40:, :15])  # beside it: unchanged
    bright = torch.full((1, 40, 40), 0.2)
    bright[:, 10:13, 18:22] = 1.0
    top, column = us.find_reflector(bright, np.random.default_rng(0))
    assert 8 <= top <= 14 and 16 <= column <= 24


def test_gamma_and_ultrasound_augment():
    mid = torch.full((1, 8, 8), 0.5)
    assert float(us.gamma_correction(mid, 1.5).mean()) < 0.5 < float(us.gamma_correction(mid, 0.7).mean())
    img, _ = fan_image(48)
    everything = UltrasoundAugment({k: 1.0 for k in ("speckle_p", "tgc_p", "attenuation_p", "gamma_p", "shadow_p")})
    a, b, c = everything(img, None, 0), everything(img, None, 0), everything(img, None, 1)
    assert torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a, img)
    assert a.min() >= 0 and a.max() <= 1
    nothing = UltrasoundAugment({k: 0.0 for k in ("speckle_p", "tgc_p", "attenuation_p", "gamma_p", "shadow_p")})
    assert torch.equal(nothing(img, None, 0), img)
    with pytest.raises(ConfigError, match="augment.speckle_probability"):
        UltrasoundAugment({"speckle_probability": 0.5})
    with pytest.raises(ConfigError, match="augment.shadow_strength"):
        UltrasoundAugment({"shadow_strength": [0.9, 0.1]})
    assert math.isclose(float(us.gamma_correction(mid, 1.0).mean()), 0.5)
