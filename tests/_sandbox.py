"""Shared by the sandbox tests: skip without bubblewrap, except in CI where its absence fails."""

from __future__ import annotations

import os
import shutil

import pytest


def require_bwrap() -> None:
    """Skip when bubblewrap is missing here; in CI (``CI`` set, as .ci/run installs it) fail instead:
    the attack suite must run there."""
    if shutil.which("bwrap") is None:
        if os.environ.get("CI"):
            pytest.fail("bubblewrap is not installed but CI is set: .ci/run must install it (docs/install.md)")
        pytest.skip("bubblewrap is not installed (apt-get install bubblewrap; docs/install.md)")


@pytest.fixture(scope="module")
def box():
    """A bwrap sandbox with short limits (the attack and behaviour tests stay fast)."""
    require_bwrap()
    from rlreason.rewards.sandbox import Limits, Sandbox

    return Sandbox(Limits(wall_s=2.0, cpu_s=1.0, memory_mb=256, file_size_mb=4, processes=32,
                          output_bytes=100_000))
