"""No test in tests/ that cannot fail, where that can be read from the source (stop 63's audit):

* a test function with no check at all: no ``assert``, no ``raise``, and no call whose name says it
  checks (``pytest.raises``/``warns``, ``assert_close``, ``np.testing.*``, ``pytest.fail``) or of a
  helper in its module that does;
* ``pytest.raises(Exception)`` / ``BaseException``: any error passes, the one expected or another;
* a ``match=`` that any message matches (``"."``, ``".*"``, ``""``, ``".+"``);
* an ``assert`` comparing a name with itself (``assert x == x``): true for every value but NaN.

A compare of two calls (``f(5) == f(5)``) is a purity check and is allowed, and so is ``x == x`` outside
an ``assert`` (a NaN filter). A test whose claim is only that something is accepted states what it
accepted (stop 63 gave each such test an assert)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
CHECK_WORDS = ("assert", "raises", "warns", "testing", "fail", "deprecated_call")
ANY_MESSAGE = {"", ".", ".*", ".+", "(?s).*", "^", "$"}


def _checks(function: ast.AST, helpers: set[str]) -> bool:
    for node in ast.walk(function):
        if isinstance(node, (ast.Assert, ast.Raise)):
            return True
        if isinstance(node, ast.Call):
            name = ast.unparse(node.func)
            if any(word in name.lower() for word in CHECK_WORDS) or name.split(".")[-1] in helpers:
                return True
        if isinstance(node, ast.Name) and node.id in helpers:   # a checking helper passed on (a fake)
            return True
    return False


def vacuous_tests(source: str, name: str = "<source>") -> list[str]:
    """``file:line: why`` of each pattern above in ``source``."""
    tree = ast.parse(source)
    functions = {f.name: f for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))}
    helpers: set[str] = set()
    grew = True
    while grew:   # helpers that check, and helpers that call those
        grew = False
        for fname, function in functions.items():
            if fname not in helpers and not fname.startswith("test") and _checks(function, helpers):
                helpers.add(fname)
                grew = True
    found = [f"{name}:{f.lineno}: {fname} checks nothing" for fname, f in functions.items()
             if fname.startswith("test") and not _checks(f, helpers)]
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and ast.unparse(node.func) in ("pytest.raises", "raises"):
            if node.args and ast.unparse(node.args[0]) in ("Exception", "BaseException", "(Exception,)"):
                found.append(f"{name}:{node.lineno}: {ast.unparse(node)} passes any error")
            for keyword in node.keywords:
                if (keyword.arg == "match" and isinstance(keyword.value, ast.Constant)
                        and keyword.value.value in ANY_MESSAGE):
                    found.append(f"{name}:{node.lineno}: match={keyword.value.value!r} matches any message")
        tests = [node.test] + list(node.test.values if isinstance(node.test, ast.BoolOp) else []) \
            if isinstance(node, ast.Assert) else []
        for compare in tests:   # the assert's own compares, not a NaN filter inside it
            if (isinstance(compare, ast.Compare) and len(compare.comparators) == 1
                    and isinstance(compare.left, (ast.Name, ast.Attribute, ast.Subscript))
                    and ast.unparse(compare.left) == ast.unparse(compare.comparators[0])
                    and not any(isinstance(n, ast.Call) for n in ast.walk(compare.left))):
                found.append(f"{name}:{node.lineno}: {ast.unparse(compare)} compares a value with itself")
    return found


@pytest.mark.parametrize("source, flagged", [
    ("def test_a():\n    f(1)\n", True),                                        # no check
    ("def test_a():\n    assert f(1) == 2\n", False),
    ("def test_a():\n    with pytest.raises(ValueError):\n        f()\n", False),
    ("def ok(x):\n    assert x\ndef test_a():\n    ok(f())\n", False),          # a helper that checks
    ("def ok(x):\n    assert x\ndef outer(x):\n    ok(x)\ndef test_a():\n    outer(1)\n", False),
    ("def test_a():\n    np.testing.assert_allclose(f(), 1.0)\n", False),
    ("def test_a():\n    with pytest.raises(Exception, match='no sweep'):\n        f()\n", True),
    ("def test_a():\n    with pytest.raises(BaseException):\n        f()\n", True),
    ("def test_a():\n    with pytest.raises(ValueError, match='.'):\n        f()\n", True),
    ("def test_a():\n    with pytest.raises(ValueError, match='.*'):\n        f()\n", True),
    ("def test_a():\n    with pytest.raises(ValueError, match='lr'):\n        f()\n", False),
    ("def test_a():\n    x = f()\n    assert x == x\n", True),
    ("def test_a():\n    assert r.value[0] == r.value[0]\n", True),
    ("def test_a():\n    assert f(5) == f(5)\n", False),                       # purity: two calls
    ("def test_a():\n    assert [x for x in v if x == x]\n", False),           # a NaN filter
    ("def no(*a):\n    raise AssertionError\ndef test_a(m):\n    m.setattr(k, 'load', no)\n    g()\n", False),
])
def test_the_scanner_tells_the_patterns(source, flagged):
    assert bool(vacuous_tests(source)) is flagged, vacuous_tests(source)


def test_no_test_that_cannot_fail_by_its_source():
    paths = sorted(TESTS.glob("*.py"))
    assert len(paths) > 300 and TESTS / "test_vacuous_scanner.py" in paths
    found = [hit for path in paths for hit in vacuous_tests(path.read_text(), path.name)]
    assert found == []
