"""The backbone under evaluation: random, an official DINOv3 `.pth`, or one of our exported teachers.

`load_eval_backbone` resolves what `--pretrained-weights` names (`dinov3_us.weights.resolve`: a file, an
HF folder, a run's converted teacher), builds the `DinoVisionTransformer` it holds and loads it with
`strict=True` (`dinov3_us.weights.load.build_backbone`: the architecture from the file's sidecar, its
format's record, else its shapes). The weights file's sha256 is recorded so that every result names
exactly what was evaluated. "random" is the released architecture at a named size, seeded.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from dinov3_us.errors import ConfigError
from dinov3_us.models import ARCHS, RELEASED_KWARGS
from dinov3_us.models.vision_transformer import DinoVisionTransformer
from dinov3_us.weights.files import file_sha256, weights_digest_file
from dinov3_us.weights.load import build_backbone
from dinov3_us.weights.resolve import resolve_weights

logger = logging.getLogger("dinov3_us")


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


def state_dict_sha256(state: Mapping[str, torch.Tensor]) -> str:
    """Hex sha256 of a state dict's names, shapes, dtypes and bytes (identifies a random initialisation)."""
    digest = hashlib.sha256()
    for key in sorted(state):
        t = state[key].detach().cpu().contiguous()
        digest.update(f"{key}:{tuple(t.shape)}:{t.dtype}".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


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
        path = resolve_weights(pretrained_weights).require_file()
        model, kwargs, kind, info = build_backbone(path, arch_name=arch, img_size=img_size, in_chans=in_chans,
                                                   **model_kwargs)
        backbone = EvalBackbone(model, kwargs, str(path), file_sha256(weights_digest_file(path)), kind, info)
    backbone.model.set_attention_backend(attention_backend)
    backbone.model.eval()
    logger.info("backbone: %s (%s), sha256 %s", backbone.weights, backbone.kind, backbone.sha256[:12])
    return backbone
