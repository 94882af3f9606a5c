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
