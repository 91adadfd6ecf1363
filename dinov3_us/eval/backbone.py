"""The backbone under evaluation: random, an official DINOv3 `.pth`, or one of our exported teachers.

`load_eval_backbone` builds a `DinoVisionTransformer` and loads its weights with `strict=True`
(through `dinov3_us.models.weights`, whose only adaptations are named and logged). The architecture
comes from, in this order: the `.json` written beside exported / converted weights
(`{"arch": DinoVisionTransformer kwargs}`), else the state dict's own shapes (`infer_arch`). The
weights file's sha256 is recorded so that every result names exactly what was evaluated.

A run folder `OUT` stands for its converted `OUT/teacher.pth`, a checkpoint folder `OUT/ckpt/<it>` for
that file when it was converted from iteration <it> (`resolve_weights_file`). Evaluation does not
convert on the fly: a run or checkpoint without its converted teacher is an error naming the
`tools/convert_checkpoint.py` command, so that results always name the sha256 of a file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from dinov3_us.checkpointer.checkpointer import MARKER
from dinov3_us.dtypes import DTYPE_NAMES
from dinov3_us.errors import CheckpointError, ConfigError
from dinov3_us.hub import RELEASED_KWARGS
from dinov3_us.interop import read_backbone, weights_digest_file
from dinov3_us.interop.hf import is_hf
from dinov3_us.models import ARCHS
from dinov3_us.models.vision_transformer import DinoVisionTransformer
from dinov3_us.models.weights import adapt_state_dict, check_state_dict
from dinov3_us.run_dir import RunDir

logger = logging.getLogger("dinov3_us")

# embed_dim -> num_heads of the known sizes (used when the state dict has no RoPE periods to read it from).
HEADS_BY_DIM = {64: 2, 192: 3, 384: 6, 768: 12, 1024: 16, 1280: 20, 1536: 24, 4096: 32}
CONTAINER_KEYS = ("teacher", "model", "state_dict")
HEAD_PREFIXES = ("dino_head.", "ibot_head.")


@dataclass
class EvalBackbone:
    """A loaded backbone and where it came from."""

    model: DinoVisionTransformer
    arch: dict  # DinoVisionTransformer kwargs
    weights: str  # "random" or the absolute path of the weights file
    sha256: str  # of the weights file (random: of the initialised state dict)
    kind: str  # random | official | exported
    info: dict = field(default_factory=dict)

    def describe(self) -> dict:
        """The `weights` entry of results.json."""
        return {"path": self.weights, "sha256": self.sha256, "kind": self.kind, "arch": self.arch, **self.info}


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file, streamed."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def state_dict_sha256(state: Mapping[str, torch.Tensor]) -> str:
    """Hex sha256 of a state dict's names, shapes, dtypes and bytes (identifies a random initialisation)."""
    digest = hashlib.sha256()
    for key in sorted(state):
        t = state[key].detach().cpu().contiguous()
        digest.update(f"{key}:{tuple(t.shape)}:{t.dtype}".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def unwrap_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Named unwrapping of training checkpoints: `{"teacher": sd}` -> sd; heads dropped beside `backbone.` keys."""
    state = dict(state)
    for key in CONTAINER_KEYS:
        if set(state) == {key} and isinstance(state[key], Mapping):
            logger.info("weights: using the %r entry of the checkpoint", key)
            state = dict(state[key])
    if any(k.startswith("backbone.") for k in state) and any(k.startswith(HEAD_PREFIXES) for k in state):
        heads = [k for k in state if k.startswith(HEAD_PREFIXES)]
        logger.info("weights: ignoring %d DINO/iBOT head tensors of a training checkpoint", len(heads))
        state = {k: v for k, v in state.items() if not k.startswith(HEAD_PREFIXES)}
    if state and all(k.startswith("backbone.") for k in state):
        state = {k[len("backbone.") :]: v for k, v in state.items()}
    return state


def _ffn(state: Mapping[str, torch.Tensor], embed_dim: int) -> tuple[str, float]:
    """(ffn_layer, ffn_ratio) from block 0's FFN weights."""
    if "blocks.0.mlp.fc1.weight" in state:
        return "mlp", state["blocks.0.mlp.fc1.weight"].shape[0] / embed_dim
    if "blocks.0.mlp.w1.weight" in state:
        hidden = state["blocks.0.mlp.w1.weight"].shape[0]
        for layer, align in (("swiglu", 8), ("swiglu32", 32), ("swiglu64", 64), ("swiglu128", 128)):
            for ratio in (4.0, 3.0, 2.0, 8 / 3, 5.3375, 1.0):
                d = int(embed_dim * ratio * 2 / 3)
                if d + (-d % align) == hidden:
                    return layer, ratio
        raise CheckpointError(f"cannot infer the SwiGLU ratio of a hidden size {hidden} at embed_dim {embed_dim}")
    raise CheckpointError("cannot infer the FFN type: no blocks.0.mlp.fc1 / blocks.0.mlp.w1 weights")


def infer_arch(state: Mapping[str, torch.Tensor]) -> dict:
    """`DinoVisionTransformer` kwargs from an official-format backbone state dict's keys and shapes.

    embed_dim from `cls_token`, depth from the `blocks.i` count, heads from the RoPE periods (head
    dim = 4 x periods) or `HEADS_BY_DIM`, patch size and channels from the patch embedding, storage
    tokens, K-bias mask (`bias_mask` buffers), FFN type, norm type, biases and LayerScale presence.
    Unobservable settings take the released backbones' values (LayerNorm eps 1e-5, RoPE base 100).
    """
    if "cls_token" not in state or "patch_embed.proj.weight" not in state:
        raise CheckpointError(
            f"cannot infer a DINOv3 backbone architecture: no cls_token / patch_embed.proj.weight among "
            f"{len(state)} keys (first: {sorted(state)[:5]})"
        )
    embed_dim = int(state["cls_token"].shape[-1])
    blocks = {int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))}
    if not blocks or blocks != set(range(max(blocks) + 1)):
        raise CheckpointError(f"cannot infer the depth: block indices {sorted(blocks)} are not 0..n-1")
    periods = state.get("rope_embed.periods")
    if periods is not None and periods.numel() > 0 and embed_dim % (4 * periods.numel()) == 0:
        num_heads = embed_dim // (4 * periods.numel())
    elif embed_dim in HEADS_BY_DIM:
        num_heads = HEADS_BY_DIM[embed_dim]
    else:
        raise CheckpointError(f"cannot infer the number of heads of embed_dim {embed_dim}")
    patch = state["patch_embed.proj.weight"]  # [D, C, p, p]
    ffn_layer, ffn_ratio = _ffn(state, embed_dim)
    storage = state.get("storage_tokens")
    return RELEASED_KWARGS | dict(
        patch_size=int(patch.shape[-1]),
        in_chans=int(patch.shape[1]),
        embed_dim=embed_dim,
        depth=max(blocks) + 1,
        num_heads=num_heads,
        ffn_layer=ffn_layer,
        ffn_ratio=ffn_ratio,
        n_storage_tokens=0 if storage is None else int(storage.shape[1]),
        mask_k_bias="blocks.0.attn.qkv.bias_mask" in state,
        qkv_bias="blocks.0.attn.qkv.bias" in state,
        proj_bias="blocks.0.attn.proj.bias" in state,
        ffn_bias=any(k.startswith("blocks.0.mlp.") and k.endswith(".bias") for k in state),
        layerscale_init=1e-5 if "blocks.0.ls1.gamma" in state else None,
        norm_layer="layernormbf16" if "norm.bias" in state else "rmsnorm",
        pos_embed_rope_dtype=DTYPE_NAMES.get(periods.dtype, "fp32") if periods is not None else "fp32",
    )


def _read_arch_json(path: Path) -> dict | None:
    meta_path = path.with_suffix(".json")
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{meta_path}: unreadable architecture file ({e})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("arch"), dict):
        raise CheckpointError(f"{meta_path}: expected {{'arch': {{DinoVisionTransformer kwargs}}, ...}}")
    return meta


def _converted_iteration(run: RunDir) -> int | None:
    """The iteration the run's teacher.pth was converted from (its teacher.json), or None when unknown."""
    if not run.teacher.is_file():
        return None
    try:
        meta = json.loads(run.teacher.with_suffix(".json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("which", "teacher") != "teacher":
        return None
    iteration = meta.get("iteration")
    return iteration if isinstance(iteration, int) else None


def resolve_weights_file(path: Path) -> Path:
    """The weights file that `--pretrained-weights path` names: the file itself, or a run's converted teacher.pth.

    A run folder (config.yaml, ckpt/ or teacher.pth inside) gives its `teacher.pth`; a checkpoint folder
    `OUT/ckpt/<it>` gives `OUT/teacher.pth` when its teacher.json says it was converted from iteration
    <it>. Otherwise `CheckpointError` names the conversion command.
    """
    if path.is_file() or is_hf(path):
        return path
    if not path.is_dir():
        raise CheckpointError(f"weights file {path} does not exist")
    if (path / MARKER).exists() or (path.parent.name == "ckpt" and path.name.isdigit()):
        run = RunDir.of_checkpoint(path)
        converted = _converted_iteration(run)
        if path.name.isdigit() and converted == int(path.name):
            logger.info("%s is a checkpoint folder: evaluating %s, converted from it", path, run.teacher)
            return run.teacher
        other = f" ({run.teacher} holds iteration {converted})" if converted is not None else ""
        raise CheckpointError(f"{path} is a checkpoint folder without its converted teacher{other}: convert it "
                              f"first with tools/convert_checkpoint.py {path}")
    run = RunDir(path)
    if run.teacher.is_file():
        converted = _converted_iteration(run)
        logger.info("%s is a run folder: evaluating its %s%s", path, run.teacher.name,
                    f" (converted from iteration {converted})" if converted is not None else "")
        latest = run.latest() if run.ckpt.is_dir() else None
        if converted is not None and latest is not None and latest.name.isdigit() and int(latest.name) > converted:
            logger.warning("%s was converted from iteration %d, the run's latest checkpoint is %s: convert it again "
                           "with tools/convert_checkpoint.py %s to evaluate that", run.teacher, converted, latest.name,
                           path)
        return run.teacher
    if run.ckpt.is_dir() or run.config.is_file():
        raise CheckpointError(f"{path} is a run folder without teacher.pth: convert it first with "
                              f"tools/convert_checkpoint.py {path}")
    raise CheckpointError(f"{path} is a folder, not a weights file (expected a .pth / .safetensors file, a run "
                          "folder or a checkpoint folder OUT/ckpt/<iteration>)")


def trained_img_size(path: Path) -> int | None:
    """The input size a weights file's backbone was trained at (`arch.img_size` in its JSON), or None."""
    meta = _read_arch_json(path)
    size = meta["arch"].get("img_size") if meta is not None else None
    return size if isinstance(size, int) and not isinstance(size, bool) and size > 0 else None


def _check_named_arch(arch_name: str | None, kwargs: dict, where: str) -> None:
    if arch_name is None:
        return
    if arch_name not in ARCHS:
        raise ConfigError(f"model.arch={arch_name!r} is not one of {sorted(ARCHS)}")
    want = ARCHS[arch_name]
    have = (kwargs["embed_dim"], kwargs["depth"], kwargs["num_heads"])
    if want != have:
        raise CheckpointError(
            f"{where} holds a backbone of (embed_dim, depth, heads) = {have}, but --arch {arch_name} is {want}"
        )


def build_random(
    arch_name: str | None, in_chans: int | None, img_size: int, seed: int, **model_kwargs
) -> tuple[dict, DinoVisionTransformer]:
    """The released architecture at size `arch_name`, initialised from `seed` (the 'random' baseline)."""
    if arch_name is None:
        raise ConfigError("--pretrained-weights random needs --arch (one of " + ", ".join(ARCHS) + ")")
    if arch_name not in ARCHS:
        raise ConfigError(f"model.arch={arch_name!r} is not one of {sorted(ARCHS)}")
    embed_dim, depth, num_heads = ARCHS[arch_name]
    kwargs = RELEASED_KWARGS | dict(
        embed_dim=embed_dim, depth=depth, num_heads=num_heads, in_chans=in_chans or 1, img_size=img_size
    )
    return kwargs, _seeded_model(kwargs, seed, **model_kwargs)


def _seeded_model(kwargs: dict, seed: int, **model_kwargs) -> DinoVisionTransformer:
    """`DinoVisionTransformer(**kwargs)` initialised from `seed`, leaving the global RNG untouched (the construction's
    default initialisation draws too: a training run's downstream monitor builds one between two steps)."""
    with torch.random.fork_rng(devices=[]):
        model = DinoVisionTransformer(**kwargs, **model_kwargs)
        torch.manual_seed(seed)
        model.init_weights()
    return model


def random_like(backbone: EvalBackbone, seed: int = 0, attention_backend: str = "auto",
                **model_kwargs) -> EvalBackbone:
    """A random initialisation of exactly `backbone`'s architecture (the baseline a pretraining must beat)."""
    return random_init(backbone.arch, backbone.weights, seed, attention_backend, **model_kwargs)


def random_init(arch: dict, architecture_of: str, seed: int = 0, attention_backend: str = "auto",
                **model_kwargs) -> EvalBackbone:
    """`DinoVisionTransformer(**arch)` initialised from `seed`, in eval mode: the random baseline of the
    backbone named `architecture_of` (the evaluations' and the pretraining monitor's, which therefore agree)."""
    model = _seeded_model(arch, seed, **model_kwargs)
    model.set_attention_backend(attention_backend)
    model.eval()
    info = {"seed": seed, "architecture_of": architecture_of}
    return EvalBackbone(model, dict(arch), "random", state_dict_sha256(model.state_dict()), "random", info)


def load_eval_backbone(
    pretrained_weights: str | os.PathLike,
    arch: str | None = None,
    in_chans: int | None = None,
    img_size: int = 224,
    *,
    seed: int = 0,
    attention_backend: str = "auto",
    **model_kwargs,
) -> EvalBackbone:
    """Build and strictly load the backbone named by `pretrained_weights` ("random", a weights file, a run folder).

    `arch` (an `ARCHS` name) is required for "random" and, for a file, checked against it; `in_chans`
    overrides the weights' channels (1 with RGB weights sums the patch filters); `model_kwargs` (e.g.
    `drop_path_rate`) are passed to the constructor. The model is returned in eval mode on CPU.
    """
    if pretrained_weights is None or str(pretrained_weights) == "":
        raise ConfigError("no backbone: give --pretrained-weights (random, an official .pth or an exported teacher)")
    if str(pretrained_weights) == "random":
        kwargs, model = build_random(arch, in_chans, img_size, seed, **model_kwargs)
        digest = state_dict_sha256(model.state_dict())
        backbone = EvalBackbone(model, kwargs, "random", digest, "random", {"seed": seed})
    else:
        path = resolve_weights_file(Path(pretrained_weights).expanduser().resolve())
        state, arch_of_format, fmt = read_backbone(path)
        state = unwrap_state_dict(state)
        meta = _read_arch_json(path) if fmt == "official" else None
        if meta is not None:
            kwargs = dict(meta["arch"])
            kind, info = "exported", {k: v for k, v in meta.items() if k != "arch"}
            logger.info("architecture from %s", path.with_suffix(".json"))
        elif arch_of_format is not None:
            kwargs, kind, info = dict(arch_of_format), fmt, {"format": fmt}
            logger.info("architecture from the %s checkpoint %s", fmt, path)
        else:
            kwargs, kind, info = infer_arch(state), "official", {}
            logger.info("architecture inferred from the state dict of %s: %s", path.name,
                        {k: kwargs[k] for k in ("embed_dim", "depth", "num_heads", "n_storage_tokens", "ffn_layer")})
        _check_named_arch(arch, kwargs, str(path))
        kwargs["img_size"] = img_size
        if in_chans is not None:
            kwargs["in_chans"] = in_chans
        try:
            model = DinoVisionTransformer(**kwargs, **model_kwargs)
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"{path}: cannot build its architecture {kwargs}: {e}") from None
        state = adapt_state_dict(state, model)
        check_state_dict(state, model, str(path))
        model.load_state_dict(state, strict=True)
        backbone = EvalBackbone(model, kwargs, str(path), file_sha256(weights_digest_file(path)), kind, info)
    backbone.model.set_attention_backend(attention_backend)
    backbone.model.eval()
    logger.info("backbone: %s (%s), sha256 %s", backbone.weights, backbone.kind, backbone.sha256[:12])
    return backbone
