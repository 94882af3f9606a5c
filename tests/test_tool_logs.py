"""What a run with tools leaves behind (issue 32, item 5): completions.jsonl rows carry the
exchange turn by turn (``messages``) and the tool stats; report.html renders each turn (the
assistant's text, its tool call, the tool's result marked as not trained) and plots the
``tools/`` metrics. The report is read back as a browser renders it (headless Chromium, where
installed) and as its HTML text."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from test_report import Cells, chromium  # noqa: E402

from rlreason.loop.experience import Rollout, completion_rows  # noqa: E402
from rlreason.rollout.base import Sample  # noqa: E402
from rlreason.run.tracking import write_report  # noqa: E402

# one exchange as TRL passes it to the rewards: a call, its result, the final answer
EXCHANGE = [
    {"role": "assistant", "content": "",
     "tool_calls": [{"type": "function", "function": {"name": "multiply", "arguments": {"a": 123, "b": 45}}}]},
    {"role": "tool", "name": "multiply", "content": "5535"},
    {"role": "assistant", "content": "The answer is 5535."},
]
STATS = {"calls": 1, "failures": 0, "turns": 2, "masked_tokens": 9, "per_tool": {"multiply": 1}}


def _rollout() -> Rollout:
    tool = Sample([5, 6, 7, 8], "x", [-0.1, 0.0, 0.0, -0.2], loss_mask=[1, 0, 0, 1], messages=EXCHANGE,
                  tool_stats=STATS)
    plain = Sample([9], "no tools here", [-0.3])
    return Rollout(prompt_ids=[[1], [1]], samples=[tool, plain], rewards=torch.tensor([1.0, 0.0]),
                   per_func={"acc": torch.tensor([1.0, 0.0])}, prompts=["123*45=", "123*45="], group_size=2,
                   metrics={}, advantages=torch.tensor([0.7, -0.7]))


def test_completion_rows_carry_the_exchange_and_its_tool_stats_only_for_multi_turn_samples():
    rows = completion_rows(_rollout(), 2)
    back = [json.loads(json.dumps(r)) for r in rows]  # what completions.jsonl holds
    assert back[0]["messages"] == EXCHANGE and back[0]["tool_stats"] == STATS
    assert back[0]["reward"] == 1.0 and back[0]["completion"] == "x"
    assert "messages" not in back[1] and "tool_stats" not in back[1]  # single-turn rows unchanged


def _run_dir(tmp_path: Path, with_tools: bool) -> Path:
    out = tmp_path / ("tools" if with_tools else "plain")
    out.mkdir()
    rows = [{"step": 1, **r} for r in completion_rows(_rollout(), 2)]
    rows[0]["messages"][1] = {**rows[0]["messages"][1], "content": "<b>5535</b>"}  # tool output is escaped
    if not with_tools:
        rows = rows[1:]  # only the single-turn completion
    (out / "completions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    metrics = [{"step": s, "reward/mean": 0.1 * s, "completion/mean_length": 20.0} for s in (1, 2, 3)]
    if with_tools:
        for s, m in enumerate(metrics):
            m.update({"tools/call_frequency": 0.2 * s, "tools/failure_frequency": 0.5 - 0.1 * s,
                      "tools/turns": 1.0 + s, "tools/masked_tokens": 3.0 * s})
    (out / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    write_report(out, {"model_name_or_path": "tiny"}, {"steps": 3})
    return out


def test_report_renders_a_tool_exchange_turn_by_turn_and_plots_tool_use(tmp_path):
    out = _run_dir(tmp_path, with_tools=True)
    page = (out / "report.html").read_text()
    assert (out / "tools.png").stat().st_size > 10_000 and 'src="tools.png"' in page
    turns = page.split("<h2>Sampled completions</h2>", 1)[1]
    # in order: the call, the result (marked not trained, escaped), the final answer
    call = turns.index('tool call: multiply({&quot;a&quot;: 123, &quot;b&quot;: 45})')
    result = turns.index("tool result (multiply), not trained")
    assert call < result < turns.index("&lt;b&gt;5535&lt;/b&gt;") < turns.index("The answer is 5535.")
    assert "<b>5535</b>" not in turns
    assert "calls 1, failures 0, turns 2, masked tokens 9 (multiply 1)" in turns
    assert "no tools here" in turns  # the single-turn row of the same step, as text


def test_report_without_tools_has_no_tool_section(tmp_path):
    out = _run_dir(tmp_path, with_tools=False)
    page = (out / "report.html").read_text()
    assert not (out / "tools.png").exists() and "Tool use" not in page and "not trained" not in page
    assert "<th>tools</th>" not in page


@pytest.mark.skipif(shutil.which("chromium") is None, reason="no chromium installed (apt-get install chromium)")
def test_a_browser_shows_the_turns_in_the_completion_cell(tmp_path):
    out = _run_dir(tmp_path, with_tools=True)
    res = chromium("--dump-dom", (out / "report.html").as_uri(), profile=tmp_path / "profile")
    assert res.returncode == 0 and "</html>" in res.stdout, res.stderr[-2000:]
    page = Cells()
    page.feed(res.stdout.split("<h2>Sampled completions</h2>", 1)[1])
    completion = [cell for col, cell in page.cells if col == "completion"]
    tools = [cell for col, cell in page.cells if col == "tools"]
    assert completion[0].startswith("assistanttool call: multiply(")
    assert "tool result (multiply), not trained<b>5535</b>" in completion[0]  # the text a reader sees
    assert completion[1] == "no tools here" and tools[1] == ""
