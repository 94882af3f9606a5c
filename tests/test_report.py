"""report.html as a reader sees it: a real tiny run's report, opened in a real headless Chromium
(Debian's `chromium` package; skipped where none is installed), shows its numbers rounded to what
they mean (percent with one decimal, CIs as [a, b], times in s or min) and the run's key settings
at the top."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_run_outputs import run  # noqa: E402
from test_trainer import SMALL  # noqa: E402

from rlreason.config import GRPOConfig  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
LONG_FLOAT = re.compile(r"\d\.\d{6,}")  # 0.30184657947702653, 136.41234...
# cells written by the model or the task, not numbers of ours
FREE_TEXT = {"prompt", "completion"}


def chromium(*args: str, profile: Path) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                           "--disable-background-networking", "--disable-component-update", "--disable-sync",
                           "--no-first-run", f"--user-data-dir={profile}", *args],
                          capture_output=True, text=True, timeout=120)


class Cells(HTMLParser):
    """Text of the rendered page, and each table cell with its column header."""

    def __init__(self):
        super().__init__()
        self.text, self.cells, self.header, self.row, self.cell, self.in_cell = [], [], [], [], [], False

    def handle_starttag(self, tag, attrs):
        if tag == "thead":
            self.header = []
        if tag in ("td", "th"):
            self.in_cell, self.cell = True, []
        if tag == "tr":
            self.row = []

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.in_cell = False
            text = "".join(self.cell)
            if tag == "th":
                self.header.append(text)
            else:
                col = self.header[len(self.row)] if len(self.row) < len(self.header) else ""
                self.cells.append((col, text))
                self.row.append(text)

    def handle_data(self, data):
        self.text.append(data)
        if self.in_cell:
            self.cell.append(data)


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium installed (apt-get install chromium)")
def test_the_report_of_a_real_run_renders_rounded_numbers_and_the_key_settings(tiny_path, tmp_path):
    out = tmp_path / "run"
    run(tiny_path, out, max_steps=2, save_steps=0, eval_steps=0, eval_size=40, final_eval_size=40,
        log_completions_steps=1, learning_rate=1e-4)
    res = chromium("--dump-dom", (out / "report.html").as_uri(), profile=tmp_path / "profile")
    assert res.returncode == 0 and "</html>" in res.stdout, res.stderr[-2000:]
    page = Cells()
    page.feed(res.stdout)
    ours = [(col, cell) for col, cell in page.cells if col not in FREE_TEXT]
    assert ours and not [c for c in ours if LONG_FLOAT.search(c[1])], [c for c in ours if LONG_FLOAT.search(c[1])]
    settings = re.sub(r"<[^>]+>", "", res.stdout.split('class="settings">', 1)[1].split("</p>", 1)[0])
    default = GRPOConfig()
    for key, value in (("model", default.model_name_or_path), ("loss_type", default.loss_type), ("steps", "2"),
                       ("lr", "0.0001"), ("num_generations", str(SMALL["num_generations"])), ("batch", "")):
        assert f"{key} {value}" in settings, (key, settings)  # the key settings line, at the top
    assert res.stdout.index('class="settings"') < res.stdout.index("<h2>Summary</h2>")
    value = dict(_summary_rows(res.stdout))
    for key in ("heldout_before", "heldout_after"):
        assert re.fullmatch(r"\d{1,3}\.\d%", value[key]), (key, value[key])
    assert re.fullmatch(r"[+-]\d{1,3}\.\d points", value["gain"])
    assert re.fullmatch(r"\[[+-]\d{1,3}\.\d, [+-]\d{1,3}\.\d\] points", value["gain_ci95"])
    assert re.fullmatch(r"\[\d{1,3}\.\d%, \d{1,3}\.\d%\]", value["after_ci95"])
    assert re.fullmatch(r"\d+(\.\d+)? (s|min)", value["train_time_s"])
    shot = tmp_path / "report.png"
    res = chromium(f"--screenshot={shot}", "--window-size=1200,1600", (out / "report.html").as_uri(),
                   profile=tmp_path / "profile")
    assert shot.exists() and shot.stat().st_size > 10_000, res.stderr[-2000:]


def _summary_rows(dom: str) -> list[tuple[str, str]]:
    """(key, value) rows of the Summary table of the rendered DOM."""
    table = dom.split("<h2>Summary</h2>", 1)[1].split("</table>", 1)[0]
    page = Cells()
    page.feed(table)
    keys = [c for col, c in page.cells if col == ""]
    values = [c for col, c in page.cells if col == "value"]
    return list(zip(keys, values, strict=True))
