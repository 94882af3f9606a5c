"""The import layers of ARCHITECTURE.md ("Layers"), read from the source with ``ast``.

Imports flow one way: ``rewards`` (the lowest layer) <- ``rollout`` <- ``eval`` <- trainer.
``algorithms``, ``batching`` and ``tasks`` depend on nothing of ours, the first two on nothing
but torch and the standard library. Every import counts, also one inside a function: a lazy
import is still a dependency.
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


# (files, what of ours they may import, whether third-party imports other than torch are allowed)
RULES = {
    "rewards": (files("rewards"), ("rlreason.rewards",), True),
    "algorithms": (files("rlreason/algorithms.py"), (), False),
    "batching": (files("rlreason/batching.py"), (), False),
    "tasks": (files("rlreason/tasks"), ("rlreason.tasks",), True),
    # rollout: the layers below it; rlreason.lora is the colocated vLLM engine's one exception
    # (merging LoRA adapters into the weights it pushes), a model utility, not the trainer
    "rollout": (files("rlreason/rollout"), ("rlreason.rollout", "rlreason.rewards", "rlreason.batching",
                                            "rlreason.algorithms", "rlreason.tasks", "rlreason.lora"), True),
}


@pytest.mark.parametrize("layer", sorted(RULES))
def test_layer_imports(layer: str) -> None:
    paths, allowed, third_party = RULES[layer]
    assert paths and all(p.is_file() for p in paths)
    bad = []
    for path in paths:
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
