"""The one config mechanism (`dinov3_us.configs.schema`) on a small schema of its own: declaration,
coercion, ranges, rules, and one error with a line per problem."""

import dataclasses

import pytest

from dinov3_us.configs.schema import AT_LEAST_ONE, UNIT, Key, Range, Rule, Schema, coerce, dataclass_schema, field
from dinov3_us.errors import ConfigError


def _epochs_rule(c):
    if c["a.warmup"] > c["a.epochs"]:
        return [f"a.warmup: expected <= a.epochs ({c['a.epochs']}), got {c['a.warmup']}"]
    return []


SCHEMA = Schema.from_defaults(
    {"a.epochs": 10, "a.warmup": 1, "a.lr": 0.1, "a.mode": "x", "a.pair": [0.1, 0.5], "a.ks": [1], "a.opt": None,
     "b.c.flag": True},
    {"a.epochs": Key(range=AT_LEAST_ONE), "a.warmup": Key(range=Range(0)), "a.lr": Key(range=UNIT),
     "a.mode": Key(choices=("x", "y")), "a.pair": Key(range=UNIT, order="<"),
     "a.ks": Key(non_empty=True, range=AT_LEAST_ONE), "a.opt": Key(float | None, range=UNIT)},
    [Rule(("a.warmup", "a.epochs"), _epochs_rule)], what="test configuration")


def test_coercion_is_one_rule_for_every_type():
    assert coerce(1, float) == (True, 1.0) and coerce("5e-4", float) == (True, 5e-4)
    assert coerce(True, int) == (False, True) and coerce(1.5, int) == (False, 1.5)
    assert coerce([1, "2e-1"], list[float]) == (True, [1.0, 0.2]) and coerce(None, float | None) == (True, None)
    assert coerce("x", float | None) == (False, "x") and coerce(3, list[int]) == (False, 3)


def test_resolve_merges_layers_and_coerces():
    flat = SCHEMA.resolve([("f.yaml", {"a.lr": 1, "a.opt": "0.5"}), ("overrides", {"a.mode": "y", "b.c": None})])
    assert flat["a.lr"] == 1.0 and isinstance(flat["a.lr"], float) and flat["a.opt"] == 0.5 and flat["a.mode"] == "y"
    assert SCHEMA.resolve([]) == SCHEMA.defaults() and SCHEMA.defaults()["a.ks"] is not SCHEMA.keys["a.ks"].default


def test_every_problem_once_one_line_each_with_where_it_was_set():
    with pytest.raises(ConfigError) as err:
        SCHEMA.resolve([("f.yaml", {"a.epoch": 3, "a.lr": "fast", "a.mode": "z", "b.c": 4}),
                        ("overrides", {"a.pair": [0.5, 0.1], "a.ks": [], "a.warmup": 20, "a.opt": 2})])
    assert str(err.value).splitlines() == [
        "invalid test configuration:",
        "  unknown key 'a.epoch' (did you mean 'a.epochs'?) (f.yaml)",
        "  a.lr: expected float, got 'fast' (f.yaml)",
        "  a.mode: expected one of 'x', 'y', got 'z' (f.yaml)",
        "  b.c: expected a mapping of keys, got 4 (f.yaml)",
        "  a.pair: expected [min, max] with min < max, got [0.5, 0.1]",
        "  a.ks: expected at least one value, got []",
        "  a.opt: expected in [0, 1], got 2.0",
        "  a.warmup: expected <= a.epochs (10), got 20",
    ]


def test_a_rule_waits_for_valid_keys_and_a_later_layer_fixes_an_earlier_value():
    with pytest.raises(ConfigError) as err:
        SCHEMA.resolve([(None, {"a.epochs": 0, "a.warmup": 20})])
    assert str(err.value).count("\n") == 1 and "a.epochs: expected >= 1, got 0" in str(err.value)
    assert SCHEMA.resolve([("f", {"a.lr": -1}), ("o", {"a.lr": 0.5})])["a.lr"] == 0.5


def test_declarations_are_checked_when_the_schema_is_built():
    with pytest.raises(TypeError, match="rules name undeclared keys"):
        Schema({"a.b": Key(int, 1)}, [Rule(("a.c",), lambda c: [])])
    assert SCHEMA.unbounded_numbers() == []
    assert Schema.from_defaults({"a.n": 1}, {}).unbounded_numbers() == ["a.n"]


def test_a_dataclass_field_declares_a_key():
    @dataclasses.dataclass
    class Section:
        ks: list[int] = field([1, 2], "the ks", range=AT_LEAST_ONE)

    @dataclasses.dataclass
    class Whole:
        s: Section = dataclasses.field(default_factory=Section)

    spec = dataclass_schema(Whole).keys["s.ks"]
    assert spec.type == list[int] and spec.default == [1, 2] and spec.doc == "the ks" and spec.range == AT_LEAST_ONE
    assert Section().ks is not Section().ks  # a list default is copied
