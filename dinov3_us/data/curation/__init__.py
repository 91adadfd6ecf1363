"""Curation of public fetal-ultrasound datasets into webdataset shards (`tools/build_dataset.py`).

One call per source (`fpdb`, `hc18`, `fplr`, `folder`, `phantom`) reads the layout of the public
download, assigns patient-level splits, preprocesses every image (grayscale, overlay masking, sector
crop, resize, near-duplicate removal) and writes `OUT/{split}-NNNNNN.tar` shards (members
`KEY.png`, `KEY.json`, `KEY.mask.png` where the source has masks) with `OUT/manifest.json`
(counts per split and label, shard list, skipped inputs by reason), `OUT/hashes.json` (pHash per
key, for cross-source dedup) and `OUT/skipped.tsv` (every skipped input). `merge_datasets` pools
several such folders. See `outputs` for the manifest layout and each `sources.*` module for the
dataset it reads.
"""

from dinov3_us.data.curation.build import build_dataset
from dinov3_us.data.curation.merge import merge_datasets
from dinov3_us.data.curation.options import BuildConfig
from dinov3_us.data.curation.sources import SOURCES

__all__ = ["SOURCES", "BuildConfig", "build_dataset", "merge_datasets"]
