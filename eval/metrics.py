"""Scoring metrics for evaluation: pure functions, no model and no I/O.

Conventions: a *problem* has ``n`` sampled completions; ``correct`` is a list of per-sample
verdicts (bool) and ``answers`` the per-sample extracted answers (``None`` = none found).
Suite-level numbers are means over problems, so every problem weighs the same whatever
its ``n``. Formulas and the maj@k tie rule are in docs/evaluation.md.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from statistics import fmean, pstdev
from typing import Any


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% (z=1.96) Wilson score interval for a binomial proportion.

    Preferred over the normal approximation because it stays inside [0, 1] and is
    accurate near 0% and 100%, where small models and hard suites live.
    """
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def diff_interval(k1: int, n1: int, k2: int, n2: int, z: float = 1.96) -> tuple[float, float]:
    """95% interval for p2 - p1 of two independent proportions (Newcombe's method 10,
    built from the two Wilson intervals)."""
    p1, p2 = k1 / n1, k2 / n2
    l1, u1 = wilson_interval(k1, n1, z)
    l2, u2 = wilson_interval(k2, n2, z)
    d = p2 - p1
    lo = d - math.sqrt((p2 - l2) ** 2 + (u1 - p1) ** 2)
    hi = d + math.sqrt((u2 - p2) ** 2 + (p1 - l1) ** 2)
    return lo, hi


# --------------------------------------------------------------------------- per problem


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem (Chen et al. 2021): ``1 - C(n-c, k) / C(n, k)``.

    The probability that at least one of ``k`` samples drawn without replacement from the
    ``n`` generated (``c`` of them correct) is correct. Computed in the numerically stable
    product form ``1 - prod_{i=n-c+1}^{n} (1 - k/i)``, which never forms the huge binomials.

    Raises ValueError unless ``0 <= c <= n`` and ``1 <= k <= n``.
    """
    if not 0 <= c <= n:
        raise ValueError(f"need 0 <= c <= n, got c={c}, n={n}")
    if not 1 <= k <= n:
        raise ValueError(f"pass@k needs 1 <= k <= n, got k={k}, n={n}")
    if n - c < k:  # every k-subset contains a correct sample
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def group_answers(answers: Sequence[str | None], same: Callable[[str, str], bool]) -> list[list[int]]:
    """Indices of ``answers`` grouped into equivalence classes, in order of first appearance.

    ``same(representative, answer)`` decides membership; a group's representative is its
    first member, and an answer joins the first group whose representative it matches
    (so a non-transitive ``same`` cannot chain groups together). ``None`` answers are left
    out of every group: a completion with no answer casts no vote.
    """
    groups: list[list[int]] = []
    for i, ans in enumerate(answers):
        if ans is None:
            continue
        for g in groups:
            if same(answers[g[0]], ans):
                g.append(i)
                break
        else:
            groups.append([i])
    return groups


def majority_vote(answers: Sequence[str | None], same: Callable[[str, str], bool]) -> int | None:
    """Index of the answer majority voting picks, or None if no sample has an answer.

    Equivalent answers (per ``same``, e.g. ``\\frac12`` and ``0.5`` under the verifier) form
    one group. The largest group wins; **tie rule**: among equally large groups, the one
    whose first member appears earliest wins. The returned index is that first member.
    """
    groups = group_answers(answers, same)
    if not groups:
        return None
    # max() keeps the first of equal keys, and groups are in order of first appearance.
    return max(groups, key=len)[0]


def maj_at_k(
    answers: Sequence[str | None],
    correct: Sequence[bool],
    k: int,
    same: Callable[[str, str], bool],
) -> float:
    """maj@k of one problem: 1.0 if the majority answer of the first ``k`` samples is correct.

    The first ``k`` samples (not an average over k-subsets) keep this cheap and exactly
    reproducible; samples are i.i.d., so the first ``k`` are a uniformly random subset.
    No answer among them scores 0.0.
    """
    if not 1 <= k <= len(answers):
        raise ValueError(f"maj@k needs 1 <= k <= n, got k={k}, n={len(answers)}")
    winner = majority_vote(answers[:k], same)
    return float(winner is not None and bool(correct[winner]))


# --------------------------------------------------------------------------- per suite


def pass1_interval(per_problem: Sequence[float], n_samples: int, z: float = 1.96) -> tuple[float, float]:
    """95% interval for pass@1 (the mean over problems of each problem's mean correctness).

    ``n_samples == 1``: each problem is a Bernoulli trial, so the Wilson interval on the
    count of solved problems. ``n_samples > 1``: the normal approximation
    ``mean +- z * sd / sqrt(P)`` over the ``P`` per-problem means (which already average out
    the sampling noise within a problem), clipped to [0, 1]. When every per-problem mean is
    the same 0 or 1 the sd is 0 and the normal interval collapses, so the Wilson interval on
    ``round(mean * P)`` of ``P`` is used instead.
    """
    count = len(per_problem)
    if count == 0:
        return 0.0, 1.0
    mean = fmean(per_problem)
    sd = pstdev(per_problem) * math.sqrt(count / (count - 1)) if count > 1 else 0.0
    if n_samples == 1 or sd == 0.0:
        return wilson_interval(round(mean * count), count, z)
    half = z * sd / math.sqrt(count)
    return max(0.0, mean - half), min(1.0, mean + half)


def suite_metrics(
    problems: Sequence[dict[str, Any]],
    ks: Sequence[int],
    same: Callable[[str, str], bool],
) -> dict[str, Any]:
    """Aggregate per-problem records into a suite's metrics.

    Each record needs ``correct`` (list[bool], one per sample), ``answers`` (list[str|None]),
    ``lengths`` (list[int], completion tokens), ``truncated`` (list[bool]) and ``formatted``
    (list[bool], whether the sample followed the template's answer format). All problems
    must have the same number of samples ``n``; ``k`` values above ``n`` are skipped.

    Returns ``{"problems", "n_samples", "pass@1", "pass@1_ci95", "pass@k"..., "maj@k"...,
    "mean_length", "truncation_rate", "format_rate", "answer_rate"}``; rates are over all
    samples, ``pass@k``/``maj@k`` are means over problems.
    """
    if not problems:
        return {"problems": 0, "n_samples": 0}
    out = _pass_metrics(problems, ks)
    n = out["n_samples"]
    for k in sorted(set(ks)):
        if 1 <= k <= n:
            out[f"maj@{k}"] = fmean(maj_at_k(p["answers"], p["correct"], k, same) for p in problems)
    total = n * len(problems)  # samples
    out["mean_length"] = sum(sum(p["lengths"]) for p in problems) / total
    out["truncation_rate"] = sum(sum(p["truncated"]) for p in problems) / total
    out["format_rate"] = sum(sum(p["formatted"]) for p in problems) / total
    out["answer_rate"] = sum(sum(a is not None for a in p["answers"]) for p in problems) / total
    return out


def _pass_metrics(problems: Sequence[dict[str, Any]], ks: Sequence[int]) -> dict[str, Any]:
    """``{"problems", "n_samples", "pass@1", "pass@1_ci95", "pass@k"...}`` of non-empty records."""
    n = len(problems[0]["correct"])
    if any(len(p["correct"]) != n for p in problems):
        raise ValueError("every problem must have the same number of samples")
    per_problem = [sum(p["correct"]) / n for p in problems]
    out: dict[str, Any] = {"problems": len(problems), "n_samples": n, "pass@1": fmean(per_problem)}
    out["pass@1_ci95"] = list(pass1_interval(per_problem, n))
    for k in sorted(set(ks)):
        if 1 <= k <= n:
            out[f"pass@{k}"] = fmean(pass_at_k(n, sum(p["correct"]), k) for p in problems)
    return out


def task_metrics(problems: Sequence[dict[str, Any]], ks: Sequence[int]) -> dict[str, Any]:
    """Aggregate the records of a task scored with its own rewards (``rlreason.eval.core.run_task``).

    Each record needs ``correct`` (list[bool]: the first reward gave the sample >= 1.0),
    ``rewards`` ({reward name: list[float | None]}, the first reward first; None where it gave
    None or failed), ``failed`` (list[bool]: some reward failed on the sample), ``lengths`` and
    ``truncated``; every problem has the same number of samples ``n``.

    Returns ``{"problems", "n_samples", "pass@1", "pass@1_ci95", "pass@k"..., "mean_reward",
    "reward/<name>"..., "mean_length", "truncation_rate", "score_failures"}``: ``mean_reward``
    is the first reward's mean over the samples it scored, ``reward/<name>`` each reward's (None
    where it scored none), ``score_failures`` the samples some reward failed on. No maj@k: a
    reward gives a score, not an answer to vote on.
    """
    if not problems:
        return {"problems": 0, "n_samples": 0}
    out = _pass_metrics(problems, ks)
    means = {}
    for name in problems[0]["rewards"]:
        values = [v for p in problems for v in p["rewards"][name] if v is not None]
        means[name] = math.fsum(values) / len(values) if values else None
    out["mean_reward"] = next(iter(means.values()), None)
    out.update({f"reward/{name}": mean for name, mean in means.items()})
    total = out["n_samples"] * len(problems)
    out["mean_length"] = sum(sum(p["lengths"]) for p in problems) / total
    out["truncation_rate"] = sum(sum(p["truncated"]) for p in problems) / total
    out["score_failures"] = sum(sum(p["failed"]) for p in problems)
    return out


def code_metrics(problems: Sequence[dict[str, Any]], ks: Sequence[int]) -> dict[str, Any]:
    """Aggregate the records of a code suite (``rlreason.eval.code.run_code_suite``): programs run
    against the suite's tests, so a verdict per sample and no answer to vote on (no maj@k).

    Each record needs ``correct`` (list[bool]: the tests passed), ``statuses`` (list[str]: the
    sandbox run's status), ``formatted`` (list[bool]: the program's code was found), ``lengths``,
    ``truncated`` and ``score_failures`` (runs the sandbox itself failed); every problem has the
    same number of samples ``n``.

    Returns ``{"problems", "n_samples", "pass@1", "pass@1_ci95", "pass@k"..., "mean_length",
    "truncation_rate", "format_rate", "statuses", "score_failures"}``: ``statuses`` counts the
    samples per run status (``{"ok": 3, "error": 5, ...}``).
    """
    if not problems:
        return {"problems": 0, "n_samples": 0}
    out = _pass_metrics(problems, ks)
    total = out["n_samples"] * len(problems)
    out["mean_length"] = sum(sum(p["lengths"]) for p in problems) / total
    out["truncation_rate"] = sum(sum(p["truncated"]) for p in problems) / total
    out["format_rate"] = sum(sum(p["formatted"]) for p in problems) / total
    out["statuses"] = dict(sorted(Counter(s for p in problems for s in p["statuses"]).items()))
    out["score_failures"] = sum(p["score_failures"] for p in problems)
    return out


def breakdown(problems: Sequence[dict[str, Any]], key: str) -> dict[str, dict[str, float]]:
    """pass@1 per value of ``problem[key]`` (e.g. subject or level): ``{value: {"problems", "pass@1"}}``.

    Problems whose ``key`` is missing or None are left out; values are sorted as strings.
    """
    buckets: dict[str, list[float]] = {}
    for p in problems:
        value = p.get(key)
        if value is None:
            continue
        buckets.setdefault(str(value), []).append(sum(p["correct"]) / len(p["correct"]))
    return {v: {"problems": len(s), "pass@1": fmean(s)} for v, s in sorted(buckets.items())}
