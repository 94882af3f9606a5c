"""benchmarks/vs_trl.py in its smallest mode (tiny model, one step, one run each), so it does not rot."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("trl")
ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_vs_trl_runs_both_trainers_on_the_same_work(tmp_path, tiny_path):
    out = tmp_path / "res.json"
    docs_before = (ROOT / "docs" / "benchmarks.md").read_text()
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "vs_trl.py"), "--sizes", "tiny", "--reps", "1",
                    "--steps", "1", "--eval-n", "8", "--no-docs", "--json", str(out)],
                   check=True, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    res = json.loads(out.read_text())
    assert (ROOT / "docs" / "benchmarks.md").read_text() == docs_before  # --no-docs
    for trainer in ("trl", "rlreason"):
        (run,) = res["runs"]["tiny"][trainer]
        (step,) = run["steps"]
        assert step["samples"] == 16 * 8
        assert 0 < step["generation"] < step["wall"] and 0 < step["training"] < step["wall"]
        assert 0.0 <= run["heldout"] <= 1.0
        assert run["peak_rss_mib"] > 100
        (summary,) = res["summary"]["tiny"][trainer]
        assert summary["samples_per_s"] == pytest.approx(128 / step["wall"])
