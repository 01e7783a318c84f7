"""The import graph the README draws: ``bucketbrush/`` is the core every deployable builds on.

- the core imports nothing from ``functions/``, ``gpu_runner/``, ``infra/`` or ``localstack/``;
  only the CLI (``bucketbrush/cli.py``, the composition root) may;
- ``functions/`` (thin handlers) and ``gpu_runner/`` (the runner) do not import each other, and
  neither imports ``infra/`` (setup and the local stack).

Imports inside functions count too (the CLI imports lazily on purpose, others must not hide
a dependency that way).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("bucketbrush", "functions", "gpu_runner", "infra", "localstack", "bench", "tests")
FORBIDDEN = {
    "bucketbrush": {"functions", "gpu_runner", "infra", "localstack", "bench", "tests"},
    "functions": {"gpu_runner", "infra", "localstack", "bench", "tests"},
    "gpu_runner": {"functions", "infra", "localstack", "bench", "tests"},
}
COMPOSITION_ROOTS = {"bucketbrush/cli.py"}


def _parse(path: Path) -> ast.AST:
    """``ast.parse``, once more after CPython 3.11's "AST constructor recursion depth mismatch":
    before 3.11.8 its recursion counter is shared with compile() in other threads (gh-106905),
    and threads an e2e test left behind (dataclasses and pydantic compile code) can trip it."""
    try:
        return ast.parse(path.read_text(), filename=str(path))
    except SystemError:
        return ast.parse(path.read_text(), filename=str(path))


def imported_packages(path: Path) -> set[tuple[str, int]]:
    """(top-level project package, line) for every import in ``path``."""
    found = set()
    for node in ast.walk(_parse(path)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found |= {(n.split(".")[0], node.lineno) for n in names if n.split(".")[0] in PACKAGES}
    return found


def layer_files(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_layers_import_only_downwards(package: str) -> None:
    violations = []
    for path in layer_files(package):
        rel = path.relative_to(ROOT).as_posix()
        if rel in COMPOSITION_ROOTS:
            continue
        violations += [f"{rel}:{line} imports {name}" for name, line in imported_packages(path)
                       if name in FORBIDDEN[package]]
    assert not violations, "\n".join(violations)


def test_the_check_sees_a_violation(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from gpu_runner.runner import JobRunner\n    import infra.local\n")
    assert imported_packages(bad) == {("gpu_runner", 2), ("infra", 3)}


def test_every_test_the_promise_table_names_exists() -> None:
    """docs/architecture.md's "Which test proves which promise": each row names tests, and
    each named test is defined where the row says (``file::name``, ``::name`` for the row's
    last file, or a whole file)."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    table = text[text.index("### Which test proves which promise"):text.index("## Layout")]
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| promise")]
    assert len(rows) >= 20
    missing = []
    for row in rows:
        named = re.findall(r"`((?:tests/[\w/]+|test_\w+)\.py)?(?:::(\w+))?`", row.rsplit("|", 2)[1])
        assert named, f"a promise without a test: {row}"
        path = None
        for file, test in named:
            if file:
                path = ROOT / (file if file.startswith("tests/") else f"tests/{file}")
            assert path is not None and path.exists(), f"no such test file in: {row}"
            if test and not re.search(rf"^def {test}\(", path.read_text(), re.M):
                missing.append(f"{path.relative_to(ROOT)}::{test}")
    assert not missing, missing
