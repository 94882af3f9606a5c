"""The import layers of ARCHITECTURE.md ("Layout"), read from the source with ``ast``.

Imports flow one way, down ``LAYERS``: recipes -> build -> loop -> (run, eval, config, rollout,
data, algorithms, rewards). ``algorithms`` and ``data.batching`` depend on nothing but torch and
the standard library, ``rewards`` on nothing else of ours. No module imports itself back through
others (no cycle). Every import counts, also one inside a function: a lazy import is still a
dependency, and a hidden cycle is still a cycle.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# source folder -> the package it installs as (pyproject.toml's package-dir)
PACKAGES = {"rlreason": "rlreason", "rewards": "rlreason.rewards", "eval": "rlreason.eval"}


def module_name(path: Path) -> str:
    """rewards/math.py -> rlreason.rewards.math; rlreason/rollout/__init__.py -> rlreason.rollout."""
    rel = path.relative_to(ROOT).with_suffix("")
    parts = [PACKAGES[rel.parts[0]], *rel.parts[1:]]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path) -> set[str]:
    """Every name ``path`` imports (``from a.b import c`` -> a.b.c), relative imports resolved."""
    return imports_of(path.read_text(), module_name(path), path.name == "__init__.py")


def imports_of(source: str, module: str, is_package: bool = False) -> set[str]:
    package = module if is_package else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                up = node.level - 1
                parent = ".".join(parts[:len(parts) - up]) if up < len(parts) else "<above the top package>"
                base = f"{parent}.{node.module}" if node.module else parent
            found.update(f"{base}.{a.name}" for a in node.names)
    return found


def ours(name: str) -> bool:
    return name.split(".")[0] in ("rlreason", "rewards", "eval") or name.startswith("<")


def within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def files(*paths: str) -> list[Path]:
    out = []
    for p in paths:
        target = ROOT / p
        out.extend(sorted(target.rglob("*.py")) if target.is_dir() else [target])
    return out


# Lowest first: a package may import its own modules and those of the packages before it. Model
# utilities (lora, moe) sit low: the vLLM engine merges adapters, checkpoints save them.
LAYERS = ("rlreason.rewards", "rlreason.algorithms", "rlreason.data", "rlreason.lora", "rlreason.moe",
          "rlreason.rollout", "rlreason.config", "rlreason.eval", "rlreason.run", "rlreason.tiny", "rlreason.loop",
          "rlreason.distill", "rlreason.build")
# Entry points, like the recipes: they may import any layer, and none imports them.
# rlreason.api is TRL's Python API (GRPOTrainer over rlreason.build), which rlreason/__init__.py exports lazily.
ENTRY_POINTS = ("rlreason.eval.cli", "rlreason.eval.__main__", "rlreason.rewards.__main__", "rlreason.__init__",
                "rlreason.api")


def layer_of(module: str) -> str:
    return next(layer for layer in LAYERS if within(module, (layer,)))


def package_modules() -> dict[str, Path]:
    out = {}
    for folder in PACKAGES:
        for path in sorted((ROOT / folder).rglob("*.py")):
            out[module_name(path)] = path
    return out


def target_module(name: str, modules: dict[str, Path]) -> str:
    """``rlreason.loop.trainer.GRPOTrainer`` -> ``rlreason.loop.trainer`` (the module that defines it)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name


def layer_files(layer: str) -> list[Path]:
    """A layer's source files: rlreason.eval -> eval/**, rlreason.loop -> rlreason/loop/**, rlreason.lora -> lora.py."""
    folder = {v: k for k, v in PACKAGES.items()}.get(layer, layer.replace(".", "/"))
    return files(folder + "/" if (ROOT / folder).is_dir() else folder + ".py")


# (files, what of ours they may import, whether third-party imports other than torch are allowed)
RULES = {
    "rewards": (files("rewards"), ("rlreason.rewards",), True),
    "algorithms": (files("rlreason/algorithms/"), ("rlreason.algorithms",), False),  # its own modules only
    "batching": (files("rlreason/data/batching.py"), (), False),
    # A built-in task may use the held-out split (rlreason/data/split.py, stdlib only), so that its
    # warm-up never draws a problem the recipe holds out of the task's file (the code task).
    "tasks": (files("rlreason/data/tasks"), ("rlreason.data.tasks", "rlreason.data.split"), True),
    **{layer.rpartition(".")[2]: (layer_files(layer), LAYERS[:i + 1], True)
       for i, layer in enumerate(LAYERS) if layer not in ("rlreason.rewards", "rlreason.algorithms")},
}


def test_no_import_cycles() -> None:
    """No module reaches itself through its imports (lazy ones included): what a function-level
    import hid before (config <-> resume, rewards.length <-> rewards.registry)."""
    modules = package_modules()
    graph = {m: {t for n in imports(p) if ours(n) and (t := target_module(n, modules)) and t != m}
             for m, p in modules.items()}
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for t in sorted(graph.get(m, ())):
            if state.get(t) == 1:
                cycles.append(path[path.index(t):] + [t])
            elif t not in state:
                visit(t, [*path, t])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_loop_never_imports_a_builder_and_nothing_imports_an_entry_point() -> None:
    modules = package_modules()
    bad = []
    for m, path in modules.items():
        for name in imports(path):
            t = target_module(name, modules)
            if within(t, ENTRY_POINTS) and t != m and not within(m, ENTRY_POINTS) and m != "rlreason":
                bad.append(f"{m} imports the entry point {t}")
    recipes = [p.stem for p in (ROOT / "recipes").glob("*.py")]
    for path in [*modules.values(), *files("tests"), *files("benchmarks")]:
        tops = {name.split(".")[0] for name in imports_of(path.read_text(), "tests.probe")}
        bad += [f"{path.relative_to(ROOT)} imports recipe {r}" for r in recipes if r in tops or "recipes" in tops]
    assert not bad, "\n".join(bad)
    assert layer_of("rlreason.loop.trainer") == "rlreason.loop"
    assert LAYERS.index("rlreason.loop") < LAYERS.index("rlreason.build")


def test_the_checker_sees_a_cycle_and_a_layer_break() -> None:
    """The rules can fail: a lazy import of the trainer from config is a layer break, and a module
    pair importing each other is a cycle."""
    assert "rlreason.loop.trainer.GRPOTrainer" in imports_of(
        "def f():\n    from rlreason.loop.trainer import GRPOTrainer\n", "rlreason.config")
    assert not within("rlreason.loop.trainer", RULES["config"][1])
    assert within("rlreason.config", RULES["loop"][1])


@pytest.mark.parametrize("layer", sorted(RULES))
def test_layer_imports(layer: str) -> None:
    paths, allowed, third_party = RULES[layer]
    assert paths and all(p.is_file() for p in paths)
    bad = []
    for path in paths:
        if within(module_name(path), ENTRY_POINTS):  # the eval CLI, like a recipe, wires what it needs
            continue
        for name in sorted(imports(path)):
            top = name.split(".")[0]
            if ours(name):
                if not within(name, allowed):
                    bad.append(f"{path.relative_to(ROOT)} imports {name}")
            elif not third_party and top not in sys.stdlib_module_names and top not in ("torch", "__future__"):
                bad.append(f"{path.relative_to(ROOT)} imports {name} (only torch and the standard library)")
    assert not bad, f"layer '{layer}' breaks ARCHITECTURE.md's layers:\n" + "\n".join(bad)


def test_the_checker_sees_violations() -> None:
    """The resolver catches what the rules exist for: relative imports leaving the package,
    absolute imports of a higher layer, lazy imports inside functions."""
    source = "from .. import trainer\nfrom .math import x\nimport torch.nn\ndef f():\n    from rlreason.data import y\n"
    assert imports_of(source, "rlreason.rewards.probe") == {
        "rlreason.trainer", "rlreason.rewards.math.x", "torch.nn", "rlreason.data.y"}
    assert imports_of("from . import base\n", "rlreason.rollout", is_package=True) == {"rlreason.rollout.base"}
    assert imports_of("from ... import x\n", "rlreason.a") == {"<above the top package>.x"}
    found = imports(ROOT / "rewards" / "preflight.py")
    assert any(within(n, ("rlreason.rewards.registry",)) for n in found)
    assert not any(within(n, ("rlreason.data",)) for n in found)


def test_only_the_algorithms_folder_names_the_loss_types() -> None:
    """A loss variant is added in rlreason/algorithms/ alone (a PRESETS row; config reads LossType
    from there): no other module spells a loss_type's name as a value, which would need an edit there
    too. The config's default loss_type is the one named value elsewhere. ("grpo" also names the
    advantage estimator, so it is left out.)"""
    import typing

    from rlreason.algorithms import PRESETS, AdvantageEstimator

    names = set(PRESETS) - set(typing.get_args(AdvantageEstimator))
    found = []
    for path in [*files("rlreason"), *files("rewards"), *files("eval"), *files("recipes")]:
        if path.is_relative_to(ROOT / "rlreason" / "algorithms"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in names:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.value!r}")
    default = [f for f in found if f.startswith("rlreason/config/__init__.py") and f.endswith("'dapo'")]
    assert len(default) == 1 and found == default, "\n".join(found)
