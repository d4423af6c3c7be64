"""The package's layers: each stage imports only the foundation, the model layer, the core and itself.

Read from the source's import statements (the module graph, not its text), so a stage that reaches into
another stage's internals fails here with the importing module and the module it reached.
"""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "duplidog"

FOUNDATION = {"errors", "atomic", "imageio", "sequence", "colour", "colour_module", "ocio", "channels",
              "temporal", "settings", "logs", "gpus", "nuke_script"}
STAGES = {"ingest", "pool", "train", "infer", "assemble", "export"}
# May import anything: they drive the stages (the command line, the benches, the demo, listings).
DRIVERS = {"__init__", "cli", "bench", "quality", "demo", "status", "model_list"}


def _layer(top: str) -> str:
    if top in FOUNDATION:
        return "foundation"
    if top in ("model", "core"):
        return top
    if top in STAGES:
        return "stage"
    if top in DRIVERS:
        return "driver"
    raise AssertionError(f"duplidog.{top} belongs to no layer: add it to test_layers.py")


def _is_module(name: str) -> bool:
    return (PACKAGE / f"{name}.py").exists() or (PACKAGE / name).is_dir()


def _imported_tops(path: Path) -> set[str]:
    """The top-level duplidog modules a source file imports, lazily or not."""
    tops = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            parts = node.module.split(".")
            if parts[0] != "duplidog":
                continue
            if len(parts) > 1:
                tops.add(parts[1])
            else:
                tops.update(alias.name for alias in node.names if _is_module(alias.name))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "duplidog" and len(parts) > 1:
                    tops.add(parts[1])
    return tops


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        yield relative.parts[0].removesuffix(".py"), relative, path


ALLOWED = {
    "foundation": {"foundation"},
    "model": {"foundation", "model"},
    "core": {"foundation", "model", "core"},
    "stage": {"foundation", "model", "core"},  # and the stage itself, checked below
}


def test_every_module_belongs_to_a_layer():
    for top, _, path in _modules():
        _layer(top)
        for imported in _imported_tops(path):
            _layer(imported)


def test_each_layer_imports_only_the_layers_below_it():
    reached = []
    for top, relative, path in _modules():
        layer = _layer(top)
        if layer == "driver":
            continue
        for imported in sorted(_imported_tops(path)):
            if imported == top:
                continue
            if _layer(imported) not in ALLOWED[layer]:
                reached.append(f"duplidog/{relative} ({layer}) imports duplidog.{imported} ({_layer(imported)})")
    assert not reached, "\n".join(reached)
