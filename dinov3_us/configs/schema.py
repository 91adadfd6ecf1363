"""The one config mechanism: declared keys, one coercion, ranges, cross-key rules, one error report.

The pretraining config (`dinov3_us.configs.config`) and the evaluation config (`dinov3_us.eval.config`)
are each a `Schema`: a `Key` per dotted key (`section.key`) and the `Rule`s that relate keys. A key is
declared once, with its default, its type (an annotation: `int`, `float`, `bool`, `str`, `list[float]`,
`float | None`; by default the type of the default), its valid values (`range`, `choices`, `length`,
`order`, `non_empty`) and a one-line `doc`. `Schema.resolve` merges layers (defaults <- file <- flags <-
overrides) and raises one `ConfigError` listing every problem, one line each, naming the key, what was
given and what was expected (and the closest valid key for an unknown one). Type problems are checked
per layer; ranges and rules on the merged config, skipping keys that are invalid, so each message is
about values that are otherwise valid.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from dinov3_us.errors import ConfigError


@dataclass(frozen=True)
class Range:
    """An interval of numbers: `low`/`high` (None: unbounded), each end closed unless `*_open`."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value: float) -> bool:
        if isinstance(value, float) and math.isnan(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return not (self.high is not None and (value >= self.high if self.high_open else value > self.high))

    def __str__(self) -> str:
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {_fmt(self.low)}" if self.low is not None else "any number"
        if self.low is None:
            return f"{'<' if self.high_open else '<='} {_fmt(self.high)}"
        return f"in {'(' if self.low_open else '['}{_fmt(self.low)}, {_fmt(self.high)}{')' if self.high_open else ']'}"


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)


POSITIVE = Range(0, low_open=True)  # > 0
NON_NEGATIVE = Range(0)  # >= 0 (0 usually means "off")
AT_LEAST_ONE = Range(1)  # counts, sizes, periods
UNIT = Range(0, 1)  # probabilities, momenta, fractions
UNIT_OPEN_HIGH = Range(0, 1, high_open=True)  # Adam betas, drop-path rate
UNIT_OPEN_LOW = Range(0, 1, low_open=True)  # crop scales, layer-wise decay


@dataclass(frozen=True)
class Key:
    """One key's declaration. Every field is optional; `Schema.from_defaults` fills `type` and `default`.

    `type` is an annotation (None: the type of the default). `range` bounds a number, or each item of a
    list of numbers; `choices` is the closed set of values (of each item, for a list; a dict's keys, read
    when a value is checked); `length` fixes a list's length; `order` ("<" or "<=") makes a 2-list a
    `[min, max]` pair; `non_empty` refuses `[]`. `null` is never range-checked.
    """

    type: Any = None
    default: Any = None
    doc: str = ""
    range: Range | None = None
    choices: Collection | None = None
    length: int | None = None
    order: str | None = None
    non_empty: bool = False


@dataclass(frozen=True)
class Rule:
    """`check(flat)` returns problem lines about `keys` (an empty list when they are consistent)."""

    keys: tuple[str, ...]
    check: Callable[[Mapping[str, Any]], list[str]]


def is_number(value: Any) -> bool:
    """True for an int or float (bools are not numbers here)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def type_ok(value: Any, expected: type) -> bool:
    """isinstance with config semantics: ints are floats, bools are not ints."""
    if expected is float or expected is int:
        return is_number(value) and (expected is float or isinstance(value, int))
    return isinstance(value, expected)


def coerce(value: Any, tp: Any) -> tuple[bool, Any]:
    """(ok, value) of `value` checked against the annotation `tp`. A float key's int becomes a float,
    and so does a numeric string (PyYAML reads `5e-4`, without a dot, as a string)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return True, None
        for arg in args:
            if arg is not type(None):
                ok, out = coerce(value, arg)
                if ok:
                    return True, out
        return False, value
    if origin is list or tp is list:
        if not isinstance(value, list):
            return False, value
        items = [coerce(v, args[0]) for v in value] if args else [(True, v) for v in value]
        return all(ok for ok, _ in items), [v for _, v in items]
    if tp is float and isinstance(value, str):
        try:
            return True, float(value)
        except ValueError:
            return False, value
    if tp is float and type_ok(value, float):
        return True, float(value)
    return type_ok(value, tp), value


def describe(tp: Any) -> str:
    """The annotation `tp` in words: `int or null`, `a list of float`."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else describe(a) for a in args)
    if origin is list:
        return f"a list of {describe(args[0])}"
    return getattr(tp, "__name__", str(tp))


def _is_list(tp: Any) -> bool:
    return tp is list or typing.get_origin(tp) is list or any(_is_list(a) for a in typing.get_args(tp))


def _nullable(tp: Any) -> bool:
    return type(None) in typing.get_args(tp)


def suggest_key(key: str, valid: Iterable[str]) -> str:
    """` (did you mean 'x'?)` for the closest valid key (by spelling, else by leaf name), or ''."""
    valid = list(valid)
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    if not close:  # a typo in the section name: compare the leaf names
        leaf = key.rsplit(".", 1)[-1]
        close = [v for v in valid if v.rsplit(".", 1)[-1] == leaf][:1]
    return f" (did you mean {close[0]!r}?)" if close else ""


def value_problem(key: str, spec: Key, value: Any) -> tuple[Any, str | None]:
    """(coerced value, None), or (value, one-line problem) when `value` has the wrong type, is not one of
    `spec.choices` or is a list of the wrong length. Ranges are `range_problem`'s."""
    ok, out = coerce(value, spec.type)
    if spec.choices is not None:
        items = out if isinstance(out, list) else [out]
        if not ok or (out is not None and any(v not in spec.choices for v in items)):
            among = ", ".join(repr(c) for c in spec.choices) + (" or null" if _nullable(spec.type) else "")
            expected = f"a list of values among {among}" if _is_list(spec.type) else f"one of {among}"
            return value, f"{key}: expected {expected}, got {value!r}"
    elif not ok:
        return value, f"{key}: expected {describe(spec.type)}, got {value!r}"
    length = 2 if spec.order else spec.length
    if length is not None and isinstance(out, list) and len(out) != length:
        return value, f"{key}: expected {length} values{' [min, max]' if spec.order else ''}, got {value!r}"
    return out, None


def range_problem(key: str, spec: Key, value: Any) -> str | None:
    """A one-line problem when `value` (already of the right type) is outside `key`'s range, else None."""
    if spec.non_empty and value == []:
        return f"{key}: expected at least one value, got []"
    if value is None or (spec.range is None and spec.order is None):
        return None
    if isinstance(value, list):
        if spec.range is not None and not all(is_number(v) and v in spec.range for v in value):
            return f"{key}: expected every value {spec.range}, got {value!r}"
        if spec.order and len(value) == 2 and (value[0] >= value[1] if spec.order == "<" else value[0] > value[1]):
            return f"{key}: expected [min, max] with min {spec.order} max, got {value!r}"
        return None
    bad = spec.range is not None and is_number(value) and value not in spec.range
    return f"{key}: expected {spec.range}, got {value!r}" if bad else None


def report(problems: list[str], what: str = "configuration") -> None:
    """Raise one `ConfigError`: `invalid <what>:` and one indented line per problem (nothing when none)."""
    if problems:
        raise ConfigError(f"invalid {what}:\n  " + "\n  ".join(problems))


def _infer_type(key: str, default: Any) -> Any:
    if isinstance(default, list) and default:
        return list[type(default[0])]
    if default is None or default == []:
        raise TypeError(f"{key}: a null or empty-list default needs a declared type (Key(type=...))")
    return type(default)


class Schema:
    """Declared keys (`{'section.key': Key}`) and the rules that relate them; `what` names it in errors."""

    def __init__(self, keys: Mapping[str, Key], rules: Iterable[Rule] = (), what: str = "configuration"):
        self.keys, self.rules, self.what = dict(keys), tuple(rules), what
        self.sections = {k.rsplit(".", i)[0] for k in self.keys for i in range(1, k.count(".") + 1)}
        unknown = {k for rule in self.rules for k in rule.keys} - set(self.keys)
        if unknown:
            raise TypeError(f"rules name undeclared keys {sorted(unknown)}")

    @classmethod
    def from_defaults(cls, defaults: Mapping[str, Any], declared: Mapping[str, Key], rules: Iterable[Rule] = (),
                      what: str = "configuration") -> Schema:
        """A schema of every key of `defaults`, each with its `declared` Key (type: the default's unless declared)."""
        extra = set(declared) - set(defaults)
        if extra:
            raise TypeError(f"declared keys without a default: {sorted(extra)}")
        keys = {}
        for key, default in defaults.items():
            spec = declared.get(key, Key())
            keys[key] = dataclasses.replace(spec, default=default, type=spec.type or _infer_type(key, default))
        return cls(keys, rules, what)

    def defaults(self) -> dict[str, Any]:
        """{'section.key': default}, each a fresh copy."""
        return {key: copy.deepcopy(spec.default) for key, spec in self.keys.items()}

    def layer(self, flat: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
        """(the well-typed values of `flat`, coerced; one problem line for each other key)."""
        valid, problems = {}, []
        for key, value in flat.items():
            if key in self.keys:
                out, problem = value_problem(key, self.keys[key], value)
                if problem:
                    problems.append(problem)
                else:
                    valid[key] = out
            elif key in self.sections:
                if value not in (None, {}):  # an empty section sets nothing
                    problems.append(f"{key}: expected a mapping of keys, got {value!r}")
            else:
                problems.append(f"unknown key {key!r}{suggest_key(key, self.keys)}")
        return valid, problems

    def value_problems(self, flat: Mapping[str, Any], skip: Iterable[str] = ()) -> list[str]:
        """Range problems, then rule problems, of a complete well-typed config (keys in `skip` are not checked;
        a rule touching a key in `skip` or out of range is not run)."""
        skip = set(skip)
        ranges = {key: p for key, value in flat.items()
                  if key not in skip and key in self.keys and (p := range_problem(key, self.keys[key], value))}
        skip |= set(ranges)
        return [*ranges.values(), *(p for rule in self.rules if not skip & set(rule.keys) for p in rule.check(flat))]

    def resolve(self, layers: Iterable[tuple[str | None, Mapping[str, Any]]]) -> dict[str, Any]:
        """The defaults updated by each `(where, {'section.key': value})` layer in turn, validated.

        One `ConfigError` lists every unknown key and wrong type (each followed by `(where)` when given),
        every value out of range and every rule broken by the merged config. A wrongly typed value keeps the
        earlier (valid) one, and its key's ranges and rules are not checked.
        """
        merged, problems, invalid = self.defaults(), [], set()
        for where, flat in layers:
            valid, layer_problems = self.layer(flat)
            merged.update(valid)
            invalid |= set(flat) - set(valid)
            problems += [f"{p} ({where})" if where else p for p in layer_problems]
        report(problems + self.value_problems(merged, invalid), self.what)
        return merged

    def describe(self) -> list[str]:
        """One line per key: `section.key: type = default, valid values  # doc`."""
        lines = []
        for key, spec in self.keys.items():
            valid = []
            if spec.choices is not None:
                valid.append(f"{'each ' if _is_list(spec.type) else ''}one of " + ", ".join(map(repr, spec.choices)))
            if spec.range is not None:
                valid.append(f"{'each ' if _is_list(spec.type) else ''}{spec.range}")
            if spec.order:
                valid.append(f"[min, max] with min {spec.order} max")
            elif spec.length is not None:
                valid.append(f"{spec.length} values")
            if spec.non_empty:
                valid.append("not empty")
            text = f"{key}: {describe(spec.type)} = {spec.default!r}" + "".join(f", {v}" for v in valid)
            lines.append(f"{text}  # {spec.doc}" if spec.doc else text)
        return lines

    def unbounded_numbers(self) -> list[str]:
        """The keys holding numbers (or lists of numbers) with neither a range nor choices: each should have one."""
        def numeric(tp):
            return tp in (int, float) or any(numeric(a) for a in typing.get_args(tp))
        return sorted(k for k, s in self.keys.items() if numeric(s.type) and s.range is None and s.choices is None)


def dataclass_schema(cls: type, rules: Iterable[Rule] = (), what: str = "configuration") -> Schema:
    """The schema of a dataclass of section dataclasses: `section.field` keys, typed by their annotations,
    with the dataclass defaults, each declared by its field's `metadata["key"]` (see `field`)."""
    keys = {}
    for section in dataclasses.fields(cls):
        section_cls = typing.get_type_hints(cls)[section.name]
        hints = typing.get_type_hints(section_cls)
        for f in dataclasses.fields(section_cls):
            default = f.default_factory() if f.default is dataclasses.MISSING else f.default
            keys[f"{section.name}.{f.name}"] = dataclasses.replace(f.metadata.get("key", Key()), type=hints[f.name],
                                                                   default=default)
    return Schema(keys, rules, what)


def field(default: Any, doc: str = "", **valid: Any) -> Any:
    """A dataclass field declared as a `Key`: `epochs: int = field(10, "passes over the data", range=AT_LEAST_ONE)`.

    A list default is copied for every instance."""
    key = Key(doc=doc, **valid)
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata={"key": key})
    return dataclasses.field(default=default, metadata={"key": key})
