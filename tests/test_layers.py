"""Import directions: every arrow points down the data flow (DESIGN.md). Each module of the package is
parsed (ast, every import statement, the ones inside functions too) and its imports are checked
against the layer order below, so a wrong arrow fails here rather than in a review."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
#: Where the modules of each top-level package live (setuptools' package-dir mapping).
SOURCES = {"embedcache": REPO / "embedcache", "embedcache.cli": REPO / "cli", "embedcache.kernels": REPO / "kernels"}

#: Top to bottom. A module may import modules of its own unit (the longest entry its name starts
#: with) and of any unit in a lower layer; units of one layer are independent of each other.
LAYERS = (
    ("embedcache.cli",),  # thin click commands over the library
    ("embedcache.demo", "embedcache.testing", "embedcache.api"),  # applications of the whole library
    ("embedcache.sweep",),  # a plan of many grids
    ("embedcache.experiments", "embedcache.analysis", "embedcache.sharded_extract"),  # many runs; what is learnt
    # from their records; an extraction split into tasks
    ("embedcache.executors", "embedcache.engine"),  # where runs and tasks execute: this process, worker processes,
    # Ray; linear runs of one cache stepped together
    ("embedcache.loop", "embedcache.workflow"),  # one simulated AL run; AL on your own unlabelled data
    ("embedcache.strategies",),  # which examples to label next
    ("embedcache.learners", "embedcache.extract", "embedcache.importer", "embedcache.specs"),  # learn from / write features
    ("embedcache.kernels", "embedcache.loading"),  # the fused scorer; examples in batches
    ("embedcache.pool", "embedcache.backbones", "embedcache.datasets", "embedcache.records", "embedcache.protocols",
     "embedcache.devices", "embedcache.sweep_index"),
    ("embedcache.cache", "embedcache.metrics", "embedcache.outputs", "embedcache.stopping"),
    ("embedcache.metadata",),
    ("embedcache.recipe", "embedcache.versions", "embedcache.faults"),
    ("embedcache.scoring", "embedcache.registry"),  # everything may use scoring, registry and errors
    ("embedcache.errors",),
)
#: The package itself is the facade of the public API: it may import anything, and others import it
#: only for its version (`embedcache.__version__`).
ROOT = "embedcache"


def _modules() -> dict[str, Path]:
    modules = {}
    for package, folder in SOURCES.items():
        for path in sorted(folder.rglob("*.py")):
            parts = path.relative_to(folder).with_suffix("").parts
            modules[".".join([package, *(p for p in parts if p != "__init__")])] = path
    return modules


def _unit(module: str) -> str | None:
    units = [u for layer in LAYERS for u in layer if module == u or module.startswith(u + ".")]
    return max(units, key=len) if units else None


def _layer(unit: str) -> int:
    return next(i for i, layer in enumerate(LAYERS) if unit in layer)


def _imports(module: str, path: Path) -> list[tuple[int, str]]:
    """(line, imported module) for every import of the package in `module`; `from embedcache import x`
    counts as importing embedcache.x unless x is the version."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, `level - 1` packages up
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            if base == ROOT:
                found += [(node.lineno, ROOT if a.name == "__version__" else f"{ROOT}.{a.name}") for a in node.names]
            else:
                found.append((node.lineno, base))
    return [(line, name) for line, name in found if name == ROOT or name.startswith(ROOT + ".")]


def _root_uses(path: Path) -> set[str]:
    """The attributes a module reads of the bare name `embedcache`."""
    return {node.attr for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == ROOT}


MODULES = _modules()


def test_every_module_has_a_place_in_the_layer_order():
    placed = {module for module in MODULES if module == ROOT or _unit(module)}
    assert placed == set(MODULES), f"add to LAYERS in {Path(__file__).name}: {sorted(set(MODULES) - placed)}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down_the_data_flow(module):
    if module == ROOT:
        return
    unit = _unit(module)
    wrong = []
    for line, imported in _imports(module, MODULES[module]):
        if imported == ROOT:
            extra = _root_uses(MODULES[module]) - {"__version__"}
            if extra:
                wrong.append(f"line {line}: the package root, for {sorted(extra)} (only __version__ may be read so)")
            continue
        target = _unit(imported)
        if target is None:
            wrong.append(f"line {line}: {imported} (not in LAYERS)")
        elif target != unit and _layer(target) <= _layer(unit):
            side = "the same layer" if _layer(target) == _layer(unit) else "a higher layer"
            wrong.append(f"line {line}: {imported} ({target}, {side} than {unit})")
    assert not wrong, f"{module} imports against the data flow:\n  " + "\n  ".join(wrong)


def test_the_checker_catches_a_wrong_arrow(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from embedcache.loop import run_al\n")
    assert _imports("embedcache.learners.bad", bad) == [(2, "embedcache.loop")]
    assert _layer(_unit("embedcache.loop")) < _layer(_unit("embedcache.learners.bad"))
