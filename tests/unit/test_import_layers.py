"""servekit's modules form layers: a module imports only from its own layer or lower ones, and no
two modules import each other (directly or around a loop).

The layers, bottom to top (ARCHITECTURE.md draws the same picture):

0. base: typed fields, errors, quoting (shell, systemd), templates, catalogs, secrets
1. schema: the fleet spec
2. plan: planner, placement, the host plan and what follows from it without a host (layouts,
   firewall rules, rendered files, NVIDIA and Ollama policy), and the cloud state file that
   gives cloud machines their addresses
3. facts: pyinfra facts (what a host says), and the programs uploaded to hosts
4. operations: reusable pyinfra operations
5. deploys: the @deploy entry points, reading inventories and fleet files
6. tools: the cloud provisioner, the benchmark and the CLI

Checked two ways: statically (every `import` in every module, those inside functions too), and by
importing each layer's modules in a fresh interpreter and listing what came with them.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import servekit

PACKAGE = Path(servekit.__file__).parent

# (layer, module prefixes); a module belongs to the layer of its longest matching prefix.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    (
        "base",
        (
            "servekit",
            "servekit.fields",
            "servekit.errors",
            "servekit.shell",
            "servekit.systemd",
            "servekit.templating",
            "servekit.catalog",
            "servekit.cuda_check",
            "servekit.pyenv",
        ),
    ),
    ("schema", ("servekit.spec", "servekit.secrets", "servekit.localhost")),
    (
        "plan",
        (
            "servekit.planner",
            "servekit.placement",
            "servekit.hostplan",
            "servekit.credentials",
            "servekit.firewall",
            "servekit.vllm_layout",
            "servekit.vllm_files",
            "servekit.vllm_builds",
            "servekit.vllm_rollout",
            "servekit.cloudstate",
            "servekit.weights",
            "servekit.hostfacts",
            "servekit.render",
            "servekit.nvidia",
            "servekit.ollama",
            "servekit.gateway",
            "servekit.monitoring",
        ),
    ),
    ("facts", ("servekit.facts", "servekit.host_scripts")),
    ("operations", ("servekit.operations",)),
    ("deploys", ("servekit.deploys", "servekit.fleetfile", "servekit.inventory")),
    (
        "tools",
        ("servekit.cloud", "servekit.bench", "servekit.cli", "servekit.doctor", "servekit.status"),
    ),
]
SCRIPTS = ("servekit.host_scripts", "servekit.deploys.host_scripts", "servekit.cuda_check")
"""Programs uploaded to hosts and run there (stdlib only), not imported."""
RANK = {name: rank for rank, (name, _prefixes) in enumerate(LAYERS)}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer(module: str) -> str:
    best, length = None, -1
    for name, prefixes in LAYERS:
        for prefix in prefixes:
            matches = module == prefix or module.startswith(prefix + ".")
            if matches and len(prefix) > length:
                best, length = name, len(prefix)
    assert best is not None, f"{module} is in no layer: add it to LAYERS"
    return best


def imports(module: str, top_level_only: bool) -> set[str]:
    """The servekit modules `module` imports (resolved to modules that exist)."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found: set[str] = set()
    for node in nodes:
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        for name in names:
            while name and name not in MODULES:
                name = name.rpartition(".")[0]
            if name.startswith("servekit") and name != module and name != "servekit":
                found.add(name)
    return found


def test_every_module_has_a_layer() -> None:
    for module in MODULES:
        layer(module)


def test_no_module_imports_a_higher_layer() -> None:
    upward = [
        f"{module} ({layer(module)}) imports {target} ({layer(target)})"
        for module in MODULES
        for target in sorted(imports(module, top_level_only=False))
        if RANK[layer(target)] > RANK[layer(module)]
    ]
    assert upward == []


def test_no_import_cycle() -> None:
    graph = {module: imports(module, top_level_only=True) for module in MODULES}
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                cycles.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == []


def test_the_checker_sees_an_upward_import(tmp_path: Path) -> None:
    """The static check is not vacuous: the deploys do import facts and plans."""
    assert "servekit.hostplan" in imports("servekit.deploys.common", top_level_only=False)
    assert RANK[layer("servekit.deploys.common")] > RANK[layer("servekit.hostplan")]
    assert layer("servekit.spec") == "schema" and layer("servekit.cli") == "tools"


@pytest.mark.parametrize("name", [name for name, _prefixes in LAYERS[:-1]])
def test_importing_a_layer_loads_nothing_above_it(name: str) -> None:
    """Import every module of a layer in a fresh interpreter: nothing of a higher layer comes
    along (lazy imports included once they run, which this does not exercise)."""
    modules = [m for m in MODULES if layer(m) == name and not m.startswith(SCRIPTS)]
    code = (
        "import importlib, json, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('servekit'))))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    loaded = json.loads(result.stdout)
    above = [m for m in loaded if m in MODULES and RANK[layer(m)] > RANK[name]]
    assert above == []
