"""Score a rollout engine on a list of problems with a reward function."""

from __future__ import annotations

from collections.abc import Callable

from rlreason.eval.metrics import wilson_interval
from rlreason.rollout.base import RolloutEngine, SamplingConfig


def evaluate(
    engine: RolloutEngine,
    prompt_ids: list[list[int]],
    prompts: list,
    answers: list[str],
    accuracy_fn: Callable,
    sampling: SamplingConfig,
    format_fn: Callable | None = None,
) -> dict:
    """Greedy (or sampled, one per problem) accuracy with a 95% Wilson interval.

    Returns {"accuracy", "accuracy_ci95", "correct", "n", "format_rate", "mean_length",
    "truncated_frac", "samples"} where samples holds the first few (prompt, completion, score).
    """
    groups = engine.generate(prompt_ids, 1, sampling)
    texts = [g[0].text for g in groups]
    scores = accuracy_fn(prompts=prompts, completions=texts, answer=answers)
    correct = sum(1 for s in scores if s is not None and s >= 1.0)
    n = len(texts)
    lo, hi = wilson_interval(correct, n)
    out = {
        "accuracy": correct / max(n, 1),
        "accuracy_ci95": [lo, hi],
        "correct": correct,
        "n": n,
        "mean_length": sum(len(g[0].token_ids) for g in groups) / max(n, 1),
        "truncated_frac": sum(g[0].finish_reason == "length" for g in groups) / max(n, 1),
        "samples": [
            {"prompt": p, "completion": t, "answer": a, "score": s}
            for p, t, a, s in list(zip(prompts, texts, answers, scores, strict=True))[:5]
        ],
    }
    if format_fn is not None:
        fmt = format_fn(prompts=prompts, completions=texts)
        out["format_rate"] = sum(1 for f in fmt if f) / max(n, 1)
    return out
