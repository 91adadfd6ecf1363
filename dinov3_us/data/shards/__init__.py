"""The shard format, in one place: what a curated folder is and how it is read and written.

A curated folder (written by `tools/build_dataset.py`) holds `{split}-NNNNNN.tar` shards in
webdataset layout (members `KEY.png`, `KEY.json`, `KEY.mask.png`; the key ends at the first dot of
the basename) and `manifest.json` (`{"shards": {split: [{"url", "n"}]}, ...}`). The parts:

- `layout`: the manifest file name, shard file names and the sample-key rule;
- `manifest`: `Shard`, reading / validating / writing `manifest.json`;
- `specs`: dataset specs (`DIR:split`, brace patterns, `pipe:` URLs) -> `Shard`s (local files checked
  to exist: `check_shards`), and `split_specs` for `train.dataset_path` (`;`-separated specs);
- `reader`: samples out of a tar by position (`read_samples`, `iter_samples`), `count_samples`;
- `writer`: `ShardWriter` / `write_shard`, deterministic tar bytes committed atomically.

The curation (`dinov3_us.data.curation`), the streaming loader (`dinov3_us.data.streaming`) and the
map-style reader (`dinov3_us.data.map_dataset`) all go through this package.

Why stdlib `tarfile` and not webdataset's tar reading and writing (webdataset is a test extra only,
used by the tests to prove that our shards read back through `wds.WebDataset`):

- Exact resume and per-worker shares need samples by *position*: the loader asks a shard for the
  positions this worker owns from the resume point on. `webdataset.tariterators.tar_file_iterator`
  reads (`extractfile().read()`) every member of a stream and exposes no offsets, so skipping means
  reading and discarding; our reader skips unwanted members on a seekable file without reading them,
  and the map-style reader `os.pread`s members at offsets recorded from the headers.
- A shard cut at a member boundary reads as a shorter valid tar; we check the end-of-archive marker,
  webdataset's iterator does not.
- `wds.TarWriter` writes USTAR headers with user/group `bigdata`, mode 0444 and (unless set) the
  current mtime, and no atomic commit: adopting it would change the bytes of every shard (builds are
  byte-reproducible and fingerprinted) for no gain.
- Speed: this reader against webdataset's `tar_file_iterator` + `group_by_keys`, side by side in one
  run, on every position, one worker's share and a resume's tail: see bench/bench_tar_reader.py ->
  bench/results/tar_reader.json. On par on full passes, faster where resume and workers need it.
"""

from dinov3_us.data.shards.layout import MANIFEST, is_shard_file, shard_name, split_key
from dinov3_us.data.shards.manifest import Shard, load_manifest, manifest_shards, write_manifest
from dinov3_us.data.shards.reader import (
    READ_ERRORS,
    check_end,
    count_samples,
    iter_members,
    iter_samples,
    open_tar,
    read_samples,
)
from dinov3_us.data.shards.specs import check_shards, expand_braces, parse_dir_spec, resolve_shards, split_specs
from dinov3_us.data.shards.writer import ShardWriter, write_shard

__all__ = [
    "MANIFEST",
    "READ_ERRORS",
    "Shard",
    "ShardWriter",
    "check_end",
    "check_shards",
    "count_samples",
    "expand_braces",
    "is_shard_file",
    "iter_members",
    "iter_samples",
    "load_manifest",
    "manifest_shards",
    "open_tar",
    "parse_dir_spec",
    "read_samples",
    "resolve_shards",
    "shard_name",
    "split_key",
    "split_specs",
    "write_manifest",
    "write_shard",
]
