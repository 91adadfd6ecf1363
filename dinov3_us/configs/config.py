"""Validated run configuration: defaults <- --config-file <- `key=value` dotlist overrides.

`ssl_default_config.yaml` beside this file holds every key a run may set, with its default and its
one-line documentation; `keys.KEYS` declares what each accepts beyond the type of its default (ranges,
closed sets, nullable types) and `cross_checks.RULES` relate keys (warmup <= epochs, crop sizes
multiple of the patch size, ...). Both make the `Schema` of `dinov3_us.configs.schema`, the mechanism
the evaluation config shares. Unlike the official code (OmegaConf with `strict_cfg=False`), an unknown
key, a wrongly typed value, a value out of range or an inconsistent combination is a `ConfigError`
naming the key (and suggesting the closest valid one for an unknown key); all problems are reported at
once, by `load_config`, before any work is done.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from dinov3_us.configs.cross_checks import RULES
from dinov3_us.configs.keys import KEYS
from dinov3_us.configs.schema import Key, Schema
from dinov3_us.errors import ConfigError
from dinov3_us.fileio import write_atomic

logger = logging.getLogger("dinov3_us")

DEFAULT_CONFIG_PATH = Path(__file__).with_name("ssl_default_config.yaml")

# The closed sets of values, by key (a view of `keys.KEYS`; `student.arch` is `dinov3_us.models.ARCHS` itself).
CHOICES: dict[str, Any] = {key: spec.choices for key, spec in KEYS.items() if spec.choices is not None}


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


KEY_LINE_RE = re.compile(r"^( *)([A-Za-z_]\w*):(.*)$")  # `  key: value  # doc`


def yaml_docs(text: str) -> dict[str, str]:
    """{'section.key': its documentation} of a YAML file of nested sections: the comment after the key,
    continued by comment-only lines indented below it."""
    docs: dict[str, str] = {}
    parents: list[tuple[int, str]] = []  # (indent, name) of the enclosing sections
    last = None
    for line in text.splitlines():
        match = KEY_LINE_RE.match(line)
        if match is None:
            if last is not None and line.strip().startswith("#") and line.startswith(" "):
                docs[last] = f"{docs[last]} {line.strip()[1:].strip()}".strip()
            continue
        indent, name, rest = len(match[1]), match[2], match[3]
        while parents and parents[-1][0] >= indent:
            parents.pop()
        value, _, comment = rest.partition(" #")
        if not value.strip():  # a section
            parents.append((indent, name))
            last = None
            continue
        last = ".".join([*(n for _, n in parents), name])
        docs[last] = comment.strip()
    return docs


@functools.cache
def pretrain_schema() -> Schema:
    """The `Schema` of a run config: the keys of `ssl_default_config.yaml` (defaults, and documentation from
    their comments), `keys.KEYS` and `cross_checks.RULES`."""
    docs = yaml_docs(DEFAULT_CONFIG_PATH.read_text(encoding="utf-8"))
    declared = {key: dataclasses.replace(KEYS.get(key, Key()), doc=doc) for key, doc in docs.items()}
    return Schema.from_defaults(flatten(read_yaml(DEFAULT_CONFIG_PATH)), declared, RULES)


def check_config(cfg: Mapping) -> None:
    """Raise one `ConfigError` listing every type, range and cross-key problem of a complete config.

    `load_config` already does this; call it on a config that did not come from `load_config`.
    """
    pretrain_schema().resolve([(None, flatten(cfg))])


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

    One `ConfigError` lists every unknown key, wrong type (followed by the file or `overrides`), value
    out of range and inconsistent combination; nothing else is done before (no model, no file), so a
    caller may rely on it.
    """
    layers = [(str(config_file), flatten(read_yaml(config_file)))] if config_file is not None else []
    layers.append(("overrides", parse_dotlist(overrides)))
    return Config.wrap(unflatten(pretrain_schema().resolve(layers)))


def get_default_config() -> Config:
    """The defaults of `ssl_default_config.yaml`."""
    return load_config()


def write_config(cfg: Config, output_dir: str | os.PathLike, name: str = "config.yaml") -> Path:
    """Write the resolved config to `output_dir/name` atomically (temp file, then rename)."""
    path = write_atomic(Path(output_dir) / name, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    logger.info("wrote resolved config to %s", path)
    return path


def config_differences(old: Mapping, new: Mapping) -> list[str]:
    """`key: old -> new` for every key whose value differs between two resolved configs (nested dicts).

    A key that `old` lacks and `new` holds at its default is not a difference: `old` was written before this
    version declared the key, and a key is added with the default that keeps the earlier behaviour (so a run
    started before an upgrade resumes after it).
    """
    a, b = flatten(old or {}), flatten(new)
    defaults = flatten(get_default_config().to_dict())
    return [f"{k}: {a.get(k, '<absent>')!r} -> {b.get(k, '<absent>')!r}" for k in sorted(set(a) | set(b))
            if a.get(k, "<absent>") != b.get(k, "<absent>")
            and not (k not in a and k in defaults and b.get(k) == defaults[k])]
