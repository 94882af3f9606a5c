"""Shared by the sandbox tests: skip where bubblewrap cannot run, except in CI, where it must."""

from __future__ import annotations

import os

import pytest


def require_bwrap() -> None:
    """Skip when bubblewrap is missing or unusable here; in CI (``CI`` set: .ci/run sets it and
    installs bubblewrap) fail instead, since the attack suite must run there."""
    from rlreason.rewards.sandbox import SandboxUnavailable, check_available

    try:
        check_available()
    except SandboxUnavailable as e:
        if os.environ.get("CI"):
            pytest.fail(f"CI is set but the sandbox cannot run: {e}")
        pytest.skip(str(e))
