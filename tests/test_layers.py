"""The package's layout, as CONTRIBUTING.md writes it: imports run one way, from the top layer down; the top of
the package holds only its entry points; modules and functions stay short enough to read."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "diffbook"

# Bottom to top: a module may import its own layer and the ones below it, never one above.
LAYERS = (
    ("profiles", "runtime", "config"),
    ("data",),
    ("diffusion", "nets"),
    ("objectives",),
    ("train",),
    ("samplers",),
    ("metrics",),
    ("viz",),
    ("experiments",),
    ("booktools",),
    ("cli", "__main__"),
)
RANK = {part: rank for rank, parts in enumerate(LAYERS) for part in parts}
TOP_LEVEL = {"__init__.py", "__main__.py", "cli", "profiles.py", "configs"}
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 400, 60
SOURCES = sorted(PACKAGE.rglob("*.py"))


def _part(path: Path) -> str:
    """The top-level part of the package a file belongs to: ``nets`` for ``nets/unet.py``."""
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


def _imported_parts(tree: ast.AST) -> set[str]:
    """Every part of the package a module imports, at the top or inside a function."""
    parts = set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names if node.module == "diffbook"]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        for name in names:
            pieces = name.split(".")
            if pieces[0] == "benchmarks":
                parts.add("benchmarks")
            elif pieces[0] == "diffbook" and len(pieces) > 1:
                parts.add(pieces[1])
    return parts


def test_every_part_of_the_package_has_a_layer():
    assert {_part(path) for path in SOURCES} - {"__init__"} <= set(RANK)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_run_down_the_layers(path):
    part = _part(path)
    if part == "__init__":
        return  # the package's own __init__ exposes the profiles, the lowest layer
    imported = _imported_parts(ast.parse(path.read_text()))
    assert "benchmarks" not in imported, "the package imports nothing from benchmarks/"
    upward = sorted(name for name in imported if RANK.get(name, -1) > RANK[part])
    assert not upward, f"{part} (layer {RANK[part]}) imports {upward}, a layer above it"


def test_the_top_of_the_package_holds_only_its_entry_points_and_subpackages():
    loose = {p.name for p in PACKAGE.iterdir() if p.name not in ("__pycache__",)} - TOP_LEVEL
    assert all((PACKAGE / name).is_dir() for name in loose), f"loose modules: {sorted(loose)}"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_modules_and_functions_are_short(path):
    source = path.read_text()
    assert len(source.splitlines()) <= MAX_MODULE_LINES
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            length = node.end_lineno - node.lineno + 1
            assert length <= MAX_FUNCTION_LINES, f"{node.name} (line {node.lineno}) has {length} lines"


def test_the_layers_are_written_in_contributing():
    text = (PACKAGE.parents[1] / "CONTRIBUTING.md").read_text()
    order = [text.find(f"`{parts[0]}`") for parts in LAYERS]
    assert -1 not in order and order == sorted(order), "CONTRIBUTING.md lists the layers, bottom to top"
