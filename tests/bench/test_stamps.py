"""Every bench result says where it came from: bench/results/*.json carry a full stamp() or the unstamped mark,
and every bench script that writes to bench/results puts stamp() into what it writes."""

from __future__ import annotations

import ast
import importlib.util
import json
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "bench"
RESULTS = sorted((BENCH / "results").glob("*.json"))
SCRIPTS = sorted(p for p in BENCH.glob("*.py") if p.name != "stamp.py")
# how a script names the results folder: "bench/results/...", REPO / "bench" / "results", or bench/results in $OUT
WRITES_RESULTS = re.compile(r"""bench/results|["']bench["']\s*/\s*["']results["']""")


def _stamp_module():
    spec = importlib.util.spec_from_file_location("bench_stamp", BENCH / "stamp.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


STAMP = _stamp_module()


def _puts_stamp_call(tree: ast.AST) -> bool:
    """Whether some dict literal in `tree` has the key "stamp" bound to a call of `stamp()`."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values):
                if (isinstance(key, ast.Constant) and key.value == "stamp" and isinstance(value, ast.Call)
                        and isinstance(value.func, ast.Name) and value.func.id == "stamp"):
                    return True
    return False


def test_there_are_results_and_scripts():
    assert len(RESULTS) >= 17 and len(SCRIPTS) >= 10


@pytest.mark.parametrize("path", RESULTS, ids=lambda p: p.name)
def test_result_is_stamped_or_marked(path: Path):
    problem = STAMP.stamp_problem(json.loads(path.read_text()))
    assert problem is None, f"{path.relative_to(REPO)}: {problem}"


@pytest.mark.parametrize("path", [p for p in SCRIPTS if WRITES_RESULTS.search(p.read_text())], ids=lambda p: p.name)
def test_script_that_writes_results_stamps_them(path: Path):
    assert _puts_stamp_call(ast.parse(path.read_text())), \
        f'{path.relative_to(REPO)} writes to bench/results but puts no "stamp": stamp() in its JSON'


def test_stamp_is_full_and_the_check_catches_what_is_not():
    got = STAMP.stamp()
    assert set(STAMP.STAMP_KEYS) <= set(got)
    assert STAMP.stamp_problem({"stamp": got}) is None
    assert got["torch"] and got["cpu"] and got["torch_threads"] >= 1
    if (REPO / ".git").exists():
        assert re.fullmatch("[0-9a-f]{40}", got["commit"]), got["commit"]
    assert STAMP.stamp_problem({"stamp": STAMP.UNSTAMPED}) is None
    assert STAMP.stamp_problem({"torch": "2.13.0"}) == 'no top-level "stamp" key'
    assert "lacks gpu" in STAMP.stamp_problem({"stamp": {k: v for k, v in got.items() if k != "gpu"}})
    assert "without a" in STAMP.stamp_problem({"stamp": {"unstamped": True}})
    assert "no value for commit" in STAMP.stamp_problem({"stamp": got | {"commit": ""}})


def test_the_script_check_sees_a_missing_stamp():
    assert _puts_stamp_call(ast.parse('out = {"stamp": stamp(), "rows": []}'))
    assert not _puts_stamp_call(ast.parse('out = {"torch": torch.__version__, "cores": os.cpu_count()}'))
    assert not _puts_stamp_call(ast.parse('out = {"stamp": None}'))
