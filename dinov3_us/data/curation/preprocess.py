"""Turn one `Record` into a `Sample`: decode, mask overlays, grayscale, crop to the sector, resize, hash, encode.

Decoded pixels become uint8 through `bitdepth.to_uint8` (16-bit and float inputs rescaled, not clipped).

`process_record` is the per-image worker (module-level so a multiprocessing pool can pickle it). It
never raises for bad input: an empty, unreadable or truncated file, or a missing / mismatched mask,
comes back as a `Skip` with a reason, which the builder counts.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from dinov3_us.data.curation.bitdepth import to_uint8
from dinov3_us.data.curation.dedup import phash, to_hex
from dinov3_us.data.curation.pixels import annotation_mask, fill_outline, inpaint_mean, sector_box
from dinov3_us.data.curation.records import Record, Sample, Skip

DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


@dataclass(frozen=True)
class PrepOptions:
    """Preprocessing switches (the CLI's defaults come from each source's `PREP_DEFAULTS`)."""

    grayscale: bool = True
    resize: int = 256
    crop_sector: bool = True
    mask_text: bool = True
    png_compression: int = 3

    def as_dict(self) -> dict:
        """The options as a plain dict (for the manifest and the build fingerprint)."""
        return asdict(self)


def decode(raw: bytes) -> Image.Image:
    """Fully decode image bytes (raises one of `DECODE_ERRORS` on corrupt or truncated data)."""
    try:
        image = Image.open(io.BytesIO(raw))
    except UnidentifiedImageError:
        # PIL's message names the buffer by its repr (`<_io.BytesIO object at 0x7f...>`), an address that
        # changes from run to run; skipped.tsv must be byte-reproducible, so say what is wrong instead.
        raise UnidentifiedImageError("cannot identify image file: not an image format PIL can read") from None
    image.load()
    return image


def encode_png(image: Image.Image, level: int) -> bytes:
    """Deterministic PNG bytes (no timestamps or text chunks)."""
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=level)
    return buf.getvalue()


def _load_mask(record: Record, size: tuple[int, int]) -> np.ndarray | Skip:
    try:
        with open(record.mask_path, "rb") as f:
            mask = np.asarray(decode(f.read()).convert("L"))
    except DECODE_ERRORS as exc:
        return Skip(record.key, "unreadable_mask", record.mask_path, str(exc))
    if mask.shape != (size[1], size[0]):
        return Skip(record.key, "mask_size_mismatch", record.mask_path, f"{mask.shape[::-1]} vs image {size}")
    return fill_outline(mask) if record.mask_kind == "outline" else (mask > 127).astype(np.uint8) * 255


def _resize(image: Image.Image, short: int, mask: bool = False) -> Image.Image:
    w, h = image.size
    if short <= 0 or min(w, h) <= short:
        return image
    scale = short / min(w, h)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    out = image.resize(size, Image.Resampling.BILINEAR if mask else Image.Resampling.BICUBIC)
    return out.point(lambda v: 255 if v >= 128 else 0) if mask else out


def process_record(record: Record, prep: PrepOptions) -> Sample | Skip:
    """Decode and preprocess one record; bad input comes back as a `Skip`, never an exception."""
    where = record.path or record.meta.get("file", record.key)
    try:
        if record.path is not None:
            with open(record.path, "rb") as f:
                raw = f.read()
        else:
            raw = record.generator()
    except OSError as exc:
        return Skip(record.key, "unreadable_image", where, str(exc))
    if not raw:
        return Skip(record.key, "empty_file", where)
    try:
        image = decode(raw)
    except DECODE_ERRORS as exc:
        return Skip(record.key, "unreadable_image", where, f"{type(exc).__name__}: {exc}")
    orig_size = image.size
    mask = _load_mask(record, orig_size) if record.mask_path else None
    if isinstance(mask, Skip):
        return mask
    arr = to_uint8(image)  # 16-bit / float inputs rescaled by their bit depth, not clipped (see bitdepth)
    overlay = annotation_mask(arr) if prep.mask_text else None
    out = Image.fromarray(arr)
    out = out.convert("L") if prep.grayscale else out
    if overlay is not None:
        out = Image.fromarray(inpaint_mean(np.array(out), overlay))
    box = sector_box(np.asarray(out.convert("L"))) if prep.crop_sector else None
    box = box or (0, 0, orig_size[0], orig_size[1])
    out = _resize(out.crop(box), prep.resize)
    mask_img = _resize(Image.fromarray(mask).crop(box), prep.resize, mask=True) if mask is not None else None
    spacing = record.meta.get("pixel_spacing_mm")
    scale = out.size[0] / (box[2] - box[0])
    h = phash(out)
    meta = {
        "key": record.key,
        "label": record.label,
        "split": record.split,
        "group": record.group,
        "original_size": list(orig_size),
        "size": list(out.size),
        "crop_box": list(box),
        "pixel_spacing_mm": spacing,
        "stored_pixel_spacing_mm": None if spacing is None else spacing / scale,
        "sha1": hashlib.sha1(raw).hexdigest(),
        "masked_overlay_pixels": 0 if overlay is None else int(overlay.sum()),
        "phash": to_hex(h),
        "has_mask": mask_img is not None,
        **{k: v for k, v in record.meta.items() if k != "pixel_spacing_mm"},
    }
    mask_png = encode_png(mask_img, prep.png_compression) if mask_img is not None else None
    return Sample(record.key, encode_png(out, prep.png_compression), mask_png, meta, h)
