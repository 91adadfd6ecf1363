"""Backbone weights files: the one home for reading, inferring, loading and writing them.

    files       the bytes: format sniffing, reading/writing tensors (`.pth`, `.safetensors`), sha256
    sidecar     the `<stem>.json` beside a weights file: its one reader and writer (the contract is there)
    hf, timm    the Hugging Face transformers and timm layouts, mapped key for key to ours (strict)
    formats     format detection (official / HF / timm), the training-checkpoint unwrapping, export to any format
    arch        the architecture of a state dict (inferred from shapes) and its check against a named size
    load        the strict adapt-and-load into a model, and building the model a weights file holds
    resolve     what a path given as weights names (a file, an HF folder, a run or checkpoint folder), and which
                checkpoint of a run is its teacher (auto / best / latest)
    checkpoint  a DCP training checkpoint's backbone -> a weights file in any format

`dinov3_us.models` knows nothing of files; `dinov3_us.checkpointer` knows DCP checkpoints only. The
main entry points are re-exported here; `resolve` and `checkpoint` (which need the run folder and
checkpoint machinery) are imported from their modules.
"""

from dinov3_us.weights.arch import infer_arch
from dinov3_us.weights.files import file_sha256, read_weights_file, weights_digest_file
from dinov3_us.weights.formats import FORMATS, export_backbone, read_backbone, save_backbone, unwrap_state_dict
from dinov3_us.weights.load import build_backbone, check_state_dict, load_backbone_weights
from dinov3_us.weights.sidecar import read_sidecar, sidecar_arch, trained_img_size, write_sidecar

__all__ = [
    "FORMATS",
    "build_backbone",
    "check_state_dict",
    "export_backbone",
    "file_sha256",
    "infer_arch",
    "load_backbone_weights",
    "read_backbone",
    "read_sidecar",
    "read_weights_file",
    "save_backbone",
    "sidecar_arch",
    "trained_img_size",
    "unwrap_state_dict",
    "weights_digest_file",
    "write_sidecar",
]
