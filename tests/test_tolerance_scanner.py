"""No ``pytest.approx`` in tests/ whose tolerance is looser than written where that can be read from the
source: approx adds a default ``abs=1e-12`` unless told ``abs=``, so ``approx(0.3, rel=1e-15)`` allows
3e-12 of relative error, and ``approx(1e-15, rel=1e-6)`` or ``approx(2e-3, abs=5e-3)`` lets 0.0 pass.
Only calls whose expected value and tolerances are constant expressions (numbers, + - * / **, tuples and
lists of them) are judged: a computed expected value has no size in the source (those were audited
by running the tests with approx, ``allclose`` and ``assert_close`` logged: stop 62). Truth: pytest's
rule, ``max(rel * |expected|, abs)`` with ``abs`` 1e-12 unless given and ``rel`` 1e-6 unless given
(0 where only ``abs`` is).

Nor a ``torch.testing.assert_close`` at its defaults (float32: rtol 1.3e-6, atol 1e-5, which allow 63% of
an entry of 1.6e-5 and every entry below 1e-5; float64: 1e-7 and 1e-7, ~1e9 ulps): a compare states its
tolerance, or a bound from ``rounding.py`` (stop 63 gave every such call one). Its dtype cannot be read from
the source, so every call without ``atol``/``rtol`` is refused, but those ``DEFAULT_ASSERT_CLOSE_KEPT`` names."""
from __future__ import annotations

import ast
import operator
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
DEFAULT_ABS, DEFAULT_REL = 1e-12, 1e-6
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
        ast.Pow: operator.pow}


def constant(node):
    """The value of a numeric constant expression (a number, or a tuple or list of numbers), else None."""
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        return [float(node.value)]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        inner = constant(node.operand)
        return None if inner is None or len(inner) != 1 else [-inner[0] if isinstance(node.op, ast.USub) else inner[0]]
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        left, right = constant(node.left), constant(node.right)
        if left is None or right is None or len(left) != 1 or len(right) != 1:
            return None
        try:
            return [float(_OPS[type(node.op)](left[0], right[0]))]
        except (ArithmeticError, ValueError):
            return None
    if isinstance(node, (ast.Tuple, ast.List)):
        parts = [constant(e) for e in node.elts]
        return None if any(p is None or len(p) != 1 for p in parts) else [p[0] for p in parts]
    return None


def loose_approx_calls(source: str, name: str = "<source>") -> list[str]:
    """``file:line: why`` of each approx call in ``source`` whose tolerance, read from its constants,
    is more than 2x looser than written, or lets 0 pass for a non-zero expected value."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not (isinstance(node, ast.Call) and node.args and ast.unparse(node.func) in ("pytest.approx", "approx")):
            continue
        expected = constant(node.args[0])
        kwargs = {k.arg: k.value for k in node.keywords}
        if expected is None or len(node.args) > 1 or not set(kwargs) <= {"rel", "abs"}:
            continue
        rel = constant(kwargs["rel"]) if "rel" in kwargs else [0.0 if "abs" in kwargs else DEFAULT_REL]
        abs_ = constant(kwargs["abs"]) if "abs" in kwargs else [DEFAULT_ABS]
        if rel is None or abs_ is None:
            continue
        for e in (abs(x) for x in expected if x != 0 and x == x and abs(x) != float("inf")):
            tol = max(rel[0] * e, abs_[0])
            if tol >= e:
                found.append(f"{name}:{node.lineno}: {ast.unparse(node)} lets 0.0 pass (tolerance {tol:g} >= {e:g})")
                break
            if "abs" not in kwargs and rel[0] * e > 0 and tol > 2 * rel[0] * e:
                found.append(f"{name}:{node.lineno}: {ast.unparse(node)} allows {tol / e:.2g} relative, not "
                             f"{rel[0]:g} (approx's default abs=1e-12: say abs=0)")
                break
    return found


@pytest.mark.parametrize("source, flagged", [
    ("pytest.approx(0.3, rel=1e-15)", True),          # 3.3e-12 relative
    ("pytest.approx(1e-15, rel=1e-6)", True),         # 0.0 passes
    ("approx(2e-3, abs=5e-3)", True),                 # 0.0 passes
    ("pytest.approx([1e-3, 2.5e-4], rel=1e-12)", True),
    ("pytest.approx(2.0 ** -600)", True),
    ("pytest.approx(0.3, rel=1e-15, abs=0)", False),
    ("pytest.approx(380.0, rel=1e-14)", False),       # 3.8e-12 > 1e-12: as written
    ("pytest.approx(0.0)", False),                    # no relative tolerance written
    ("pytest.approx(1.0, abs=1e-6)", False),
    ("pytest.approx(x, rel=1e-15)", False),           # computed: no size in the source
    ("pytest.approx(2 / 3, abs=1e-15)", False),
])
def test_the_scanner_reads_approx_as_pytest_does(source, flagged):
    assert bool(loose_approx_calls(source)) == flagged


def test_no_test_writes_a_constant_approx_looser_than_it_says():
    found = [hit for path in sorted(TESTS.glob("*.py")) for hit in loose_approx_calls(path.read_text(), path.name)]
    assert not found, "\n".join(found)


# (file, test function) -> why its default ``assert_close`` stays
DEFAULT_ASSERT_CLOSE_KEPT = {
    ("test_models_mlp.py", "test_paper_mup_under_sgd_equals_per_layer_lrs_on_effective_weights"):
        "float64 after an SGD step: both sides' weights carry their backward pass's rounding, for which no "
        "bound is derived; 2.2e-16 measured against the defaults' 1e-7",
}


def default_assert_close_calls(source: str, name: str = "<source>") -> list[tuple[str, str, int]]:
    """``(file, enclosing test, line)`` of each ``assert_close`` call in ``source`` that passes neither
    ``atol`` nor ``rtol`` (nor ``**kwargs``, which may carry them)."""
    found = []

    def visit(node, function):
        for child in ast.iter_child_nodes(node):
            inner = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) and function is None \
                else function
            if isinstance(child, ast.Call) and ast.unparse(child.func).split(".")[-1] == "assert_close":
                keywords = {k.arg for k in child.keywords}
                if not keywords & {"atol", "rtol", None}:
                    found.append((name, function or "<module>", child.lineno))
            visit(child, inner)

    visit(ast.parse(source), None)
    return found


@pytest.mark.parametrize("source, flagged", [
    ("def test_a():\n    torch.testing.assert_close(a, b)", True),
    ("def test_a():\n    assert_close(a, b, check_dtype=False)", True),
    ("def test_a():\n    def inner():\n        torch.testing.assert_close(a, b)", True),   # helper in a test
    ("def test_a():\n    torch.testing.assert_close(a, b, rtol=0, atol=1e-12)", False),
    ("def test_a():\n    torch.testing.assert_close(a, b, **tolerances)", False),
    ("def test_a():\n    np.testing.assert_allclose(a, b)", False),          # rtol 1e-7, atol 0: relative
    ("def test_a():\n    assert torch.equal(a, b)", False),
])
def test_the_scanner_finds_assert_close_at_its_defaults(source, flagged):
    assert bool(default_assert_close_calls(source)) == flagged


def test_the_scanner_names_the_enclosing_test():
    source = "def helper():\n    pass\n\ndef test_b():\n    x = 1\n    torch.testing.assert_close(x, x)\n"
    assert default_assert_close_calls(source, "f.py") == [("f.py", "test_b", 6)]


def test_no_test_compares_at_assert_close_defaults():
    found = [hit for path in sorted(TESTS.glob("*.py")) for hit in default_assert_close_calls(path.read_text(), path.name)]
    kept = [hit for hit in found if hit[:2] in DEFAULT_ASSERT_CLOSE_KEPT]
    assert {hit[:2] for hit in kept} == set(DEFAULT_ASSERT_CLOSE_KEPT), "a kept call is gone: drop it from the list"
    wrong = [f"{f}:{line} ({test}): assert_close at its defaults; give atol/rtol or a rounding.py bound"
             for f, test, line in found if (f, test) not in DEFAULT_ASSERT_CLOSE_KEPT]
    assert not wrong, "\n".join(wrong)
