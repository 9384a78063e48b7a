"""Every test must pass, and assert what it claims, when it runs alone (``pytest path::test_name``).

The order dependency that broke this before: a module-level counter that one test filled and
another test reported and asserted on; run alone, the second asserted ``0 == 0``. Running every slow file
a second time in isolation would catch more but doubles ``make test``; this is the cheap guard, run in
``make unit`` and CI: a scan of the test code (``tests/**/*.py`` except conftest.py, whose hooks keep
session-wide state by design) for a module-level mutable collection that a function mutates.

What it does not see: state hidden in objects other than plain collections, state outside the process
(topics, Redis keys: every test takes its own ``unique`` names), or a test that relies on a fixture's side
effect without requesting it. A collection that really is order-independent (e.g. a memo of a pure
function) can say so with ``# order-independent: <why>`` on its line.
"""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit
TESTS = Path(__file__).resolve().parent
FACTORIES = {"dict", "list", "set", "Counter", "defaultdict", "OrderedDict", "deque", "bytearray"}
MUTATORS = {"append", "extend", "insert", "add", "update", "setdefault", "pop", "popitem", "clear", "remove",
            "discard", "appendleft", "extendleft", "sort", "reverse", "rotate", "subtract", "__setitem__",
            "__delitem__"}
MARKER = "# order-independent:"


def _is_mutable(value: ast.expr) -> bool:
    if isinstance(value, ast.Dict | ast.List | ast.Set | ast.DictComp | ast.ListComp | ast.SetComp):
        return True
    if isinstance(value, ast.Call):
        func = value.func
        name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
        return name in FACTORIES
    return False


def _module_collections(tree: ast.Module, lines: list[str]) -> set[str]:
    """Names bound at module level to a mutable collection (not marked order-independent)."""
    names = set()
    for statement in tree.body:
        if isinstance(statement, ast.Assign):
            targets, value = statement.targets, statement.value
        elif isinstance(statement, ast.AnnAssign) and statement.value is not None:
            targets, value = [statement.target], statement.value
        else:
            continue
        if _is_mutable(value) and MARKER not in lines[statement.lineno - 1]:
            names.update(t.id for t in targets if isinstance(t, ast.Name))
    return names


def _local_names(function: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) -> set[str]:
    """Names a function binds itself (parameters, assignments), which shadow module-level ones."""
    args = function.args
    bound = {a.arg for a in [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg] if a}
    bound |= {n.id for n in ast.walk(function) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
    declared = {name for n in ast.walk(function) if isinstance(n, ast.Global) for name in n.names}
    return bound - declared


def shared_state_mutations(source: str) -> list[str]:
    """``line: what`` for each mutation of a module-level collection, or ``global`` rebinding, in a function."""
    tree = ast.parse(source)
    collections = _module_collections(tree, source.splitlines())
    found = set()
    for function in ast.walk(tree):
        if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            continue
        shared = collections - _local_names(function)
        for node in ast.walk(function):
            if isinstance(node, ast.Global):
                found.add((node.lineno, f"global {', '.join(node.names)}"))
            targets = node.targets if isinstance(node, ast.Assign | ast.Delete) else \
                [node.target] if isinstance(node, ast.AugAssign) else []
            for target in targets:
                if isinstance(target, ast.Subscript) and isinstance(target.value, ast.Name) \
                        and target.value.id in shared:
                    found.add((node.lineno, f"{target.value.id}[...] changed"))
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in MUTATORS \
                    and isinstance(node.func.value, ast.Name) and node.func.value.id in shared:
                found.add((node.lineno, f"{node.func.value.id}.{node.func.attr}()"))
    return [f"{line}: {what}" for line, what in sorted(found)]


def test_no_test_module_keeps_state_that_tests_share() -> None:
    files = sorted(p for p in TESTS.rglob("*.py") if p.name != "conftest.py" and "__pycache__" not in p.parts)
    assert len(files) > 50  # the scan sees the suite
    problems = [f"{path.relative_to(TESTS.parent)}:{finding}" for path in files
                for finding in shared_state_mutations(path.read_text())]
    assert not problems, ("module-level state mutated by functions: a test that reads it depends on which tests "
                          "ran before it. Count inside the test (or a fixture) instead:\n  " + "\n  ".join(problems))


def test_the_scan_finds_a_counter_one_test_fills_and_another_reads() -> None:
    before_issue_25 = textwrap.dedent('''
        FUZZ = {"tried": 0, "crashes": 0}
        SEEN = []
        LIMITS = {"max": 3}  # read only: fine
        CACHE = {}  # order-independent: a memo of a pure function
        TABLE = dict(a=1)
        TABLE["b"] = 2  # at import time: fine

        def test_property(record):
            FUZZ["tried"] += 1
            SEEN.append(record)
            CACHE[record] = 1
            assert record < LIMITS["max"]

        def test_figures():
            assert FUZZ["crashes"] == 0

        def test_shadowing(SEEN=None):
            FUZZ = {}
            FUZZ["x"] = 1
            SEEN.append(1)

        def test_rebinds():
            global LIMITS
            LIMITS = {}
        ''')
    assert shared_state_mutations(before_issue_25) == ["10: FUZZ[...] changed", "11: SEEN.append()",
                                                       "24: global LIMITS"]
