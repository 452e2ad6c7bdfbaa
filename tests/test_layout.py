"""The package layout: each subpackage imports only the subpackages below it (docs/architecture.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "semhash_spark"

# subpackage -> the subpackages it may import; every one may import the foundation modules
ALLOWED = {
    "io": set(),
    "models": {"io"},
    "data": {"io"},
    "index": {"models", "data", "io"},
    "evaluation": {"index", "models", "data", "io"},
    "training": {"evaluation", "models", "data", "io"},
    "service": {"index", "models", "data", "io"},
}
FOUNDATION = ("config", "codes", "resources", "progress")
MAX_TOP_LEVEL = 10


def imported(path: Path, root: Path) -> set[str]:
    """Absolute names of the semhash_spark modules (or attributes) ``path`` imports, lazily or not."""
    package = list(path.relative_to(root.parent).with_suffix("").parts)[:-1]  # what relative imports resolve in
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            found.update(f"{module}.{a.name}" for a in node.names)
    return {n for n in found if n.split(".")[0] == root.name}


def unit(name: str, root: Path) -> str:
    """The layer a dotted semhash_spark name belongs to: a subpackage, a top-level module, or the package."""
    parts = name.split(".")
    if len(parts) == 1:
        return root.name
    if (root / parts[1]).is_dir():
        return parts[1]
    if (root / f"{parts[1]}.py").is_file():
        return parts[1]
    return root.name  # an attribute of semhash_spark/__init__.py


def violations(root: Path) -> list[str]:
    found = []
    subpackages = sorted(p.name for p in root.iterdir() if p.is_dir() and any(p.glob("*.py")))
    for name in subpackages:
        if name not in ALLOWED:
            found.append(f"{name}/: no import contract in tests/test_layout.py (add it to ALLOWED)")
    for path in sorted(root.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        rel = path.relative_to(root)
        src = rel.parts[0] if len(rel.parts) > 1 else rel.stem
        for name in sorted(imported(path, root)):
            dst = unit(name, root)
            if dst == src or dst in FOUNDATION and (src in ALLOWED or src in FOUNDATION):
                continue
            if src in FOUNDATION:
                found.append(f"{rel}: imports {name}; foundation modules import only each other")
            elif src in ALLOWED and dst not in ALLOWED[src]:
                found.append(
                    f"{rel}: imports {name}; {src}/ may import only {sorted(ALLOWED[src])} and {list(FOUNDATION)}"
                )
    return found


def test_subpackages_import_only_what_they_may():
    assert violations(PACKAGE) == []


def test_at_most_ten_modules_directly_under_the_package():
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= MAX_TOP_LEVEL, top


def test_each_subpackage_says_what_it_owns_and_may_import():
    for name in ALLOWED:
        init = PACKAGE / name / "__init__.py"
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        says = "may import" in doc or "imports no other subpackage" in doc
        assert says and len(doc) > 80, f"{init} has no docstring saying what it owns and may import"


@pytest.mark.parametrize(
    "source, expected",
    [
        ("from semhash_spark.training import fit\n", "index/bad.py: imports semhash_spark.training.fit"),
        ("def f():\n    from ..training.fit import x\n", "index/bad.py: imports semhash_spark.training.fit.x"),
        ("from semhash_spark import cli\n", "index/bad.py: imports semhash_spark.cli"),
    ],
)
def test_the_check_sees_a_wrong_import(tmp_path, source, expected):
    root = tmp_path / "semhash_spark"
    for name in list(ALLOWED) + ["models"]:
        (root / name).mkdir(parents=True, exist_ok=True)
        (root / name / "__init__.py").write_text("")
    for name in FOUNDATION + ("cli",):
        (root / f"{name}.py").write_text("")
    (root / "index" / "ok.py").write_text("from semhash_spark.io import store\nfrom ..codes import pack\n")
    (root / "index" / "bad.py").write_text(source)
    found = violations(root)
    assert len(found) == 1 and found[0].startswith(expected), found
