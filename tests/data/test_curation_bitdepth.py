"""High-bit-depth inputs (16-bit PNG, 10/12-bit values in 16 bits, 32-bit int, float) curate to uint8, unclipped."""

import io

import numpy as np
import pytest
from curation_testutil import decode
from PIL import Image

from dinov3_us.data.curation.bitdepth import to_uint8
from dinov3_us.data.curation.preprocess import PrepOptions, process_record
from dinov3_us.data.curation.records import Record, Sample

# No resize / crop / inpainting: the stored pixels are the converted input, one to one.
PLAIN = PrepOptions(resize=0, crop_sector=False, mask_text=False, png_compression=1)


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _curate(path, prep=PLAIN) -> np.ndarray:
    sample = process_record(Record("k", "train", None, None, str(path)), prep)
    assert isinstance(sample, Sample), sample
    return decode(sample.image_png)


def _skewed(bits: int, seed: int = 0) -> np.ndarray:
    """A dark-skewed image (like a scan: mostly dark, a few bright echoes) using values 0 .. 2**bits - 1."""
    u = np.random.default_rng(seed).random((64, 80)) ** 3
    return np.rint(u * (2**bits - 1)).astype(np.uint16)


@pytest.mark.parametrize("bits", [16, 12, 10])
def test_16bit_png_keeps_relative_intensities(tmp_path, bits):
    raw = _skewed(bits)
    path = tmp_path / f"img{bits}.png"
    path.write_bytes(_png(raw))
    assert Image.open(path).mode.startswith("I;16")  # a real 16-bit grayscale PNG
    got = _curate(path)
    expected = np.rint(raw * (255.0 / (2**bits - 1)))
    assert got.dtype == np.uint8 and got.shape == raw.shape
    assert abs(got.mean() - expected.mean()) < 1.0, (got.mean(), expected.mean())
    assert np.abs(got.astype(int) - expected).max() <= 1
    assert (got == 255).mean() <= (expected == 255).mean() + 1e-9  # nothing saturates that should not
    assert (got == 255).mean() < 0.02


def test_real_scan_stored_in_16_and_12_bits_curates_like_the_8bit_original(data_dir, tmp_path):
    """An HC18 scan re-stored with 16-bit and 12-bit values gives (within a grey level) the 8-bit curation."""
    original = data_dir / "hc18" / "training_set" / "002_HC.png"
    gray = np.asarray(Image.open(original).convert("L"))
    prep = PrepOptions(png_compression=1)  # the real-scan defaults: overlay inpainting, sector crop, resize 256
    reference = _curate(original, prep)
    for name, scaled in (("16", gray.astype(np.uint16) * 257), ("12", np.rint(gray * (4095 / 255)).astype(np.uint16))):
        path = tmp_path / f"002_HC_{name}bit.png"
        path.write_bytes(_png(scaled))
        got = _curate(path, prep)
        assert got.shape == reference.shape, name
        assert abs(got.mean() - reference.mean()) < 1.0, (name, got.mean(), reference.mean())
        assert abs((got == 255).mean() - (reference == 255).mean()) < 0.001, name


def test_to_uint8_rules_per_mode():
    eight_in_16 = np.array([[0, 100, 255]], dtype=np.uint16)  # 8-bit values in a 16-bit container: kept
    assert to_uint8(Image.fromarray(eight_in_16)).tolist() == [[0, 100, 255]]
    full = np.array([[0, 32768, 65535]], dtype=np.uint16)
    assert to_uint8(Image.fromarray(full)).tolist() == [[0, 128, 255]]
    i32 = np.array([[-5, 512, 1023]], dtype=np.int32)  # mode I, 10-bit values; negatives clip to 0
    assert Image.fromarray(i32).mode == "I" and to_uint8(Image.fromarray(i32)).tolist() == [[0, 128, 255]]
    unit = np.array([[0.0, 0.5, 1.0, np.nan]], dtype=np.float32)  # mode F in [0, 1]
    assert to_uint8(Image.fromarray(unit)).tolist() == [[0, 128, 255, 0]]
    hu = np.array([[0.0, 2047.5, 4095.0]], dtype=np.float32)  # mode F above 1: the integer rule
    assert to_uint8(Image.fromarray(hu)).tolist() == [[0, 128, 255]]
    rgb = np.arange(12, dtype=np.uint8).reshape(2, 2, 3)
    assert to_uint8(Image.fromarray(rgb)).tolist() == rgb.tolist()  # 8-bit modes as before: L or RGB
    assert to_uint8(Image.fromarray(rgb).convert("P")).shape == (2, 2, 3)
