"""Validated run configuration: defaults <- --config-file <- `key=value` dotlist overrides.

`ssl_default_config.yaml` beside this file is the single source of defaults and of the schema:
every key a run may set is there, and a value's type is the type of its default. Keys whose default
is `null` (or may be) and keys with a closed set of values are declared in `NULLABLE_TYPES` and
`CHOICES`; every numeric key has a valid range in `ranges.RANGES`, and `cross_checks.RULES` relate
keys (warmup <= epochs, crop sizes multiple of the patch size, ...). Unlike the official code
(OmegaConf with `strict_cfg=False`), an unknown key, a wrongly typed value, a value out of range or
an inconsistent combination is a `ConfigError` naming the key (and suggesting the closest valid one
for an unknown key); all problems are reported at once, by `load_config`, before any work is done.
"""

from __future__ import annotations

import difflib
import logging
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from dinov3_us.configs.cross_checks import cross_problems
from dinov3_us.configs.ranges import PAIRS, range_problems
from dinov3_us.errors import ConfigError
from dinov3_us.fileio import write_atomic

logger = logging.getLogger("dinov3_us")

DEFAULT_CONFIG_PATH = Path(__file__).with_name("ssl_default_config.yaml")

# Keys whose default is null, or that may be set to null: the type a non-null value must have.
NULLABLE_TYPES: dict[str, type] = {
    "student.pos_embed_rope_base": float,  # null: periods from pos_embed_rope_min_period / max_period
    "gram.ckpt": str,
    "gram.max_updates": int,
    "student.pos_embed_rope_min_period": float,
    "student.pos_embed_rope_max_period": float,
    "student.pos_embed_rope_shift_coords": float,
    "student.pos_embed_rope_jitter_coords": float,
    "student.pos_embed_rope_rescale_coords": float,
    "crops.gram_teacher_crops_size": int,
    "schedules.lr.cosine_epochs": int,
    "schedules.weight_decay.cosine_epochs": int,
    "schedules.momentum.cosine_epochs": int,
    "schedules.teacher_temp.cosine_epochs": int,
}

# Keys whose default is an empty list: the type of their items.
LIST_ITEM_TYPES: dict[str, type] = {"data.pool_weights": float}

# Keys with a closed set of valid values.
CHOICES: dict[str, tuple] = {
    "compute_precision.param_dtype": ("bf16", "fp16", "fp32"),
    "compute_precision.reduce_dtype": ("bf16", "fp32"),
    "gram.tokens_used": ("all", "masked", "unmasked"),
    "train.centering": ("sinkhorn_knopp", "softmax", "none"),
    "student.arch": ("vit_test", "vit_tiny", "vit_small", "vit_base", "vit_large"),
    "student.ffn_layer": ("mlp", "swiglu", "swiglu32", "swiglu64", "swiglu128"),
    "student.norm_layer": ("layernorm", "layernormbf16", "rmsnorm"),
    "student.in_chans": (1, 3),
    "student.pos_embed_type": ("rope",),
    "student.pos_embed_rope_normalize_coords": ("min", "max", "separate"),
    "student.pos_embed_rope_dtype": ("bf16", "fp16", "fp32"),
    "optim.optimizer": ("adamw",),
    "optim.scaling_rule": ("sqrt_wrt_1024", "linear_wrt_256", "none"),
    "runtime.device": ("auto", "cpu", "cuda"),
    "runtime.dist_backend": ("auto", "nccl", "gloo"),
    "attention.backend": ("auto", "sdpa", "xformers", "matmul"),
    "monitor.select": ("knn", "linear"),
    "teacher.temp_control": ("official", "auto"),
}


class Config(dict):
    """A nested dict with attribute access (`cfg.student.arch`); `to_dict()` gives plain dicts."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"config has no key {name!r}; keys: {sorted(self)}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value

    @classmethod
    def wrap(cls, data: Mapping) -> Config:
        """Recursively turn a mapping into a `Config`."""
        return cls({k: cls.wrap(v) if isinstance(v, Mapping) else v for k, v in data.items()})

    def to_dict(self) -> dict:
        """Plain nested dicts, e.g. for YAML dumping."""
        return {k: v.to_dict() if isinstance(v, Config) else v for k, v in self.items()}


def read_yaml(path: str | os.PathLike) -> dict:
    """A YAML file's top-level mapping ({} for an empty file); `ConfigError` naming the file otherwise."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections, got {type(data).__name__}")
    return data


def flatten(data: Mapping, prefix: str = "") -> dict[str, Any]:
    """{'section.key': value} of nested mappings (an empty mapping is kept as a value)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def unflatten(flat: Mapping[str, Any]) -> dict:
    """The nested mapping of {'section.key': value} (inverse of `flatten`)."""
    out: dict = {}
    for dotted, value in flat.items():
        node = out
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


OVERRIDE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\.[A-Za-z0-9_.]+=")  # section.key=value


def split_overrides(values: Iterable[str]) -> tuple[list[str], list[str]]:
    """(other values, `section.key=value` overrides) of a command-line list, order kept in each.

    An option with `nargs="+"` swallows the overrides written after it; this gives them back.
    """
    values = list(values)
    return [v for v in values if not OVERRIDE_RE.match(v)], [v for v in values if OVERRIDE_RE.match(v)]


def suggest_key(key: str, valid: Iterable[str]) -> str:
    """` (did you mean 'x'?)` for the closest valid key (by spelling, else by leaf name), or ''."""
    valid = list(valid)
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    if not close:  # a typo in the section name: compare the leaf names
        leaf = key.rsplit(".", 1)[-1]
        close = [v for v in valid if v.rsplit(".", 1)[-1] == leaf][:1]
    return f" (did you mean {close[0]!r}?)" if close else ""


def type_ok(value: Any, expected: type) -> bool:
    """isinstance with config semantics: ints are floats, bools are not ints."""
    if expected is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, expected)


def _check_value(key: str, value: Any, default: Any) -> str | None:
    """Return a problem description, or None when `value` has a valid type (and choice) for `key`."""
    if value is None and key in NULLABLE_TYPES:
        return None
    if default is None:
        expected = NULLABLE_TYPES.get(key)
        if value is None or expected is None:
            return None
        if not type_ok(value, expected):
            return f"{key}: expected {expected.__name__} or null, got {value!r}"
    elif isinstance(default, list):
        if not isinstance(value, list):
            return f"{key}: expected a list like {default!r}, got {value!r}"
        item_type = type(default[0]) if default else LIST_ITEM_TYPES.get(key)
        if item_type is not None and not all(type_ok(v, item_type) for v in value):
            return f"{key}: expected a list of {item_type.__name__}, got {value!r}"
        if key in PAIRS and len(value) != 2:
            return f"{key}: expected 2 values [min, max], got {value!r}"
    elif not type_ok(value, type(default)):
        return f"{key}: expected {type(default).__name__} (default {default!r}), got {value!r}"
    choices = CHOICES.get(key)
    if choices is not None and value not in choices:
        return f"{key}: {value!r} is not one of {list(choices)}"
    return None


def _coerce(key: str, value: Any, default: Any) -> Any:
    """PyYAML reads `5e-4` (no dot) as a string: accept it where a float is expected."""
    expected = NULLABLE_TYPES.get(key) if default is None else type(default)
    if expected is float and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    if isinstance(default, list) and default and isinstance(default[0], float) and isinstance(value, list):
        return [_coerce(key + "[]", v, 0.0) for v in value]
    return value


def _type_check(flat: Mapping[str, Any], defaults: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """(valid keys of `flat` with numeric strings coerced, problem lines of the others)."""
    problems, out = [], {}
    for key, value in flat.items():
        if key not in defaults:
            problems.append(f"unknown key {key!r}{suggest_key(key, defaults)}")
            continue
        value = _coerce(key, value, defaults[key])
        problem = _check_value(key, value, defaults[key])
        if problem:
            problems.append(problem)
        else:
            out[key] = value
    return out, problems


def _raise(problems: list[str]) -> None:
    if problems:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems))


def validate(flat: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
    """Return `flat` with numeric strings coerced; raise one `ConfigError` listing every type problem.

    Ranges and cross-key rules need the complete config: `load_config` and `check_config` apply them.
    """
    out, problems = _type_check(flat, defaults)
    _raise(problems)
    return out


def value_problems(flat: Mapping[str, Any], skip: Iterable[str] = ()) -> list[str]:
    """Range and cross-key problems of a complete, well-typed flattened config (keys in `skip` are not checked)."""
    skip = set(skip)
    ranges = range_problems(flat, skip)
    return list(ranges.values()) + cross_problems(flat, skip | set(ranges))


def check_config(cfg: Mapping) -> None:
    """Raise one `ConfigError` listing every type, range and cross-key problem of a complete config.

    `load_config` already does this; call it on a config that did not come from `load_config`.
    """
    defaults = flatten(read_yaml(DEFAULT_CONFIG_PATH))
    flat = {**defaults, **flatten(cfg)}
    out, problems = _type_check(flat, defaults)
    _raise(problems + value_problems({**defaults, **out}, set(flat) - set(out)))


def parse_dotlist(overrides: Iterable[str]) -> dict[str, Any]:
    """Parse `section.key=value` strings; values are YAML (`1e-3`, `[0.1, 0.5]`, `null`, `true`)."""
    flat: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} is not of the form section.key=value")
        try:
            flat[key.strip()] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as err:
            raise ConfigError(f"override {item!r}: value is not valid YAML: {err}") from None
    return flat


def load_config(config_file: str | os.PathLike | None = None, overrides: Iterable[str] = ()) -> Config:
    """Build a run's config: defaults <- `config_file` <- `overrides` (`section.key=value`), validated.

    One `ConfigError` lists every unknown key, wrong type, value out of range and inconsistent
    combination; nothing else is done before (no model, no file), so a caller may rely on it.
    """
    defaults = flatten(read_yaml(DEFAULT_CONFIG_PATH))
    merged = dict(defaults)
    layers = []
    if config_file is not None:
        layers.append(flatten(read_yaml(config_file)))
    layers.append(parse_dotlist(overrides))
    problems, invalid = [], set()
    for layer in layers:
        out, layer_problems = _type_check(layer, defaults)
        merged.update(out)
        problems += layer_problems
        invalid |= set(layer) - set(out)
    _raise(problems + value_problems(merged, invalid))
    return Config.wrap(unflatten(merged))


def get_default_config() -> Config:
    """The defaults of `ssl_default_config.yaml`."""
    return load_config()


def write_config(cfg: Config, output_dir: str | os.PathLike, name: str = "config.yaml") -> Path:
    """Write the resolved config to `output_dir/name` atomically (temp file, then rename)."""
    path = write_atomic(Path(output_dir) / name, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    logger.info("wrote resolved config to %s", path)
    return path


def config_differences(old: Mapping, new: Mapping) -> list[str]:
    """`key: old -> new` for every key whose value differs between two resolved configs (nested dicts)."""
    a, b = flatten(old or {}), flatten(new)
    return [f"{k}: {a.get(k, '<absent>')!r} -> {b.get(k, '<absent>')!r}" for k in sorted(set(a) | set(b))
            if a.get(k, "<absent>") != b.get(k, "<absent>")]
