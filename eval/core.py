"""Score a rollout engine: on a list of problems (``evaluate``, the trainer's held-out eval)
and on benchmark suites (``evaluate_suites``, the CLI and periodic evaluation).

Everything here talks to the engine through the ``RolloutEngine`` protocol only, so the
transformers engine and a vLLM engine are interchangeable.
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from rlreason.data import render_prompt
from rlreason.eval.metrics import breakdown, suite_metrics, wilson_interval
from rlreason.eval.suites import TEMPLATES, Suite, Template, get_suite, get_template, load_problems
from rlreason.rewards._deadline import time_limit
from rlreason.rewards.format import format_reward
from rlreason.rewards.math import RULES, extract_answer, verify
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


# --------------------------------------------------------------------------- protocol


@dataclass
class EvalProtocol:
    """How a suite is run; all of it is written to the results file.

    Sampling: ``n`` samples per problem at ``temperature``/``top_p``/``top_k`` with at most
    ``max_tokens`` new tokens; ``temperature == 0`` is greedy (then ``n`` should be 1).
    ``seed`` seeds torch/random before each suite, so a suite's samples do not depend on
    which suites ran before it. ``ks``: the k of pass@k and maj@k (those above ``n`` are
    skipped). ``limit``: the first ``limit`` problems of each suite (None = all).

    Prompt: ``template`` names a built-in template (None = each suite's default);
    ``user_template`` (a ``str.format`` string over the row's columns and ``{prompt}``)
    and ``system_prompt`` override the template's parts when given (``""`` clears the
    system prompt); ``chat_template``: ``"auto"`` renders through the tokenizer's chat
    template when it has one, ``"on"`` requires one, ``"off"`` sends raw text.

    Scoring: answers are extracted with ``extract_rules``/``extract_fallback`` (see
    ``rlreason.rewards.math.extract_answer``) and compared to the gold with ``verify``,
    each completion within ``score_timeout_s`` seconds (else scored wrong and counted).
    """

    n: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    max_tokens: int = 1024
    seed: int = 0
    ks: tuple[int, ...] = (1,)
    limit: int | None = None
    template: str | None = None
    user_template: str | None = None
    system_prompt: str | None = None
    chat_template: str = "auto"
    extract_rules: tuple[str, ...] = RULES
    extract_fallback: str | tuple[str, ...] | None = None
    score_timeout_s: float = 5.0  # per completion: extraction + verification (0 = no limit)
    extra: dict[str, Any] = field(default_factory=dict)  # free-form notes recorded with the config

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")
        if self.chat_template not in ("auto", "on", "off"):
            raise ValueError(f"chat_template must be auto, on or off, got {self.chat_template!r}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be >= 1 or None, got {self.limit}")
        if self.template is not None:
            get_template(self.template)
        self.sampling()  # validates temperature/top_p/max_tokens now, not after loading a model
        extract_answer("", self.extract_rules, self.extract_fallback)  # validates rule names

    def sampling(self) -> SamplingConfig:
        return SamplingConfig(max_tokens=self.max_tokens, temperature=self.temperature, top_p=self.top_p,
                              top_k=self.top_k)

    def template_for(self, suite: Suite) -> Template:
        """The template ``suite`` is run with: the protocol's choice or the suite's default,
        with ``user_template``/``system_prompt`` overrides applied."""
        base = get_template(self.template or suite.default_template)
        return dataclasses.replace(
            base,
            user=self.user_template if self.user_template is not None else base.user,
            system=(self.system_prompt or None) if self.system_prompt is not None else base.system,
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------- scoring


def render(problem: dict, suite: Suite, template: Template, tokenizer: Any, chat_template: str) -> str:
    """The prompt text for one problem (what the model continues).

    Same rendering as the trainer's ``rlreason.data.prepare``: the template fills the user
    message, which goes through the tokenizer's chat template (with the system prompt) when
    it is used, else is sent as raw text after the system prompt.
    """
    has_chat = bool(getattr(tokenizer, "chat_template", None))
    if chat_template == "on" and not has_chat:
        raise ValueError("chat_template='on' but the tokenizer has no chat template")
    text = render_prompt(problem["row"], prompt_column=suite.problem_column, tokenizer=tokenizer,
                         use_chat_template=chat_template != "off", template=template.user,
                         system_prompt=template.system)
    if not isinstance(text, str):
        raise ValueError(f"suite {suite.name!r}: conversational prompts need a chat template")
    return text


def follows_format(text: str, template: Template, answer: str | None) -> bool:
    """Whether a completion followed the template's answer format (``Template.format``)."""
    if template.format == "think_answer":
        return format_reward(prompts=[None], completions=[text])[0] == 1.0
    if template.format == "boxed":
        return extract_answer(text, rules=("boxed",)) is not None
    return answer is not None


# Scoring calls that hit the time limit, since import (reported per suite as "score_timeouts").
TIMEOUTS: Counter[str] = Counter()


def score_text(text: str, gold: Any, protocol: EvalProtocol) -> tuple[str | None, bool | None]:
    """(extracted answer, verdict) of one completion; verdict None when the gold is unparseable.

    Extraction plus verification is limited to ``protocol.score_timeout_s``; past it the
    completion is scored wrong (answer kept if already extracted) and counted in ``TIMEOUTS``.
    """
    answer = None
    try:
        with time_limit(protocol.score_timeout_s):
            answer = extract_answer(text, protocol.extract_rules, protocol.extract_fallback)
            return answer, verify(gold, answer)
    except TimeoutError:
        TIMEOUTS["score"] += 1
        return answer, False


def same_answer(a: str, b: str, timeout_s: float = 5.0) -> bool:
    """Answer equivalence for majority voting: ``b`` verified against ``a`` read as a gold
    (False if that takes longer than ``timeout_s``)."""
    try:
        with time_limit(timeout_s):
            return bool(verify(a, b))
    except TimeoutError:
        TIMEOUTS["same_answer"] += 1
        return False


def score_problem(problem: dict, texts: Sequence[str], protocol: EvalProtocol, template: Template) -> dict:
    """Score one problem's completions. -> the per-problem record (without generation stats)."""
    before = TIMEOUTS["score"]
    scored = [score_text(t, problem["gold"], protocol) for t in texts]
    return {
        "score_timeouts": TIMEOUTS["score"] - before,
        "answers": [a for a, _ in scored],
        "correct": [bool(v) for _, v in scored],
        "gold_unparseable": any(v is None for _, v in scored),
        "formatted": [follows_format(t, template, a) for t, (a, _) in zip(texts, scored, strict=True)],
    }


def summarize(records: Sequence[dict], ks: Sequence[int]) -> dict[str, Any]:
    """A suite's metrics from its per-problem records, with subject/level breakdowns where present."""
    before = sum(TIMEOUTS.values())
    out = suite_metrics(records, ks, same_answer)
    out["gold_unparseable"] = sum(r["gold_unparseable"] for r in records)
    out["score_timeouts"] = sum(r.get("score_timeouts", 0) for r in records) + sum(TIMEOUTS.values()) - before
    for key in ("subject", "level"):
        parts = breakdown(records, key)
        if parts:
            out[f"by_{key}"] = parts
    return out


# --------------------------------------------------------------------------- suites


def _seed_all(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def run_suite(
    engine: RolloutEngine,
    tokenizer: Any,
    suite: Suite,
    protocol: EvalProtocol,
    allow_hub: bool = True,
) -> tuple[dict[str, Any], list[dict]]:
    """Generate and score one suite. -> (metrics, per-problem records).

    A record: ``{"suite", "index", "id", "subject", "level", "prompt", "gold", "completions",
    "answers", "correct", "formatted", "lengths", "truncated", "gold_unparseable"}``.
    """
    template = protocol.template_for(suite)
    problems = load_problems(suite, protocol.limit, allow_hub)
    prompts = [render(p, suite, template, tokenizer, protocol.chat_template) for p in problems]
    # As the trainer tokenizes: the chat template already inserted any special tokens.
    prompt_ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in prompts]
    _seed_all(protocol.seed)
    groups = engine.generate(prompt_ids, protocol.n, protocol.sampling()) if problems else []
    records = []
    for p, prompt, group in zip(problems, prompts, groups, strict=True):
        texts = [s.text for s in group]
        rec = {"suite": suite.name, "index": p["index"], "id": p["id"], "subject": p["subject"], "level": p["level"],
               "prompt": prompt, "gold": p["gold"], "completions": texts}
        rec.update(score_problem(p, texts, protocol, template))
        rec["lengths"] = [len(s.token_ids) for s in group]
        rec["truncated"] = [s.finish_reason == "length" for s in group]
        records.append(rec)
    metrics = summarize(records, protocol.ks)
    metrics["template"] = dataclasses.asdict(template)
    return metrics, records


def evaluate_suites(
    engine: RolloutEngine,
    tokenizer: Any,
    suites: Sequence[str | Suite],
    protocol: EvalProtocol | None = None,
    *,
    limit: int | None = None,
    allow_hub: bool = True,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Evaluate ``engine`` on benchmark suites (the trainer's periodic eval and the CLI).

    Args:
        engine: any ``RolloutEngine`` (the trainer's own engine works as is).
        tokenizer: the model's tokenizer (renders and tokenizes prompts).
        suites: suite names (see ``rlreason.eval.suites.SUITES``) or ``Suite`` objects.
        protocol: sampling, prompt and scoring settings; default greedy, n=1, 1024 tokens.
        limit: overrides ``protocol.limit`` (problems per suite) when given.
        allow_hub: whether a suite without a local file may be fetched from the hub.
        log: called with one progress line per suite (e.g. ``print``).

    Returns:
        ``{"config": {"protocol", "suites"}, "suites": {name: metrics}, "problems": {name: [records]}}``;
        metrics as ``summarize`` (``pass@1``, ``pass@1_ci95``, ``pass@k``, ``maj@k``,
        ``mean_length``, ``truncation_rate``, ``format_rate``, ``answer_rate``, breakdowns).
        ``flat_metrics`` turns it into ``{"eval/<suite>/<metric>": float}`` for logging.
    """
    protocol = protocol or EvalProtocol()
    if limit is not None:
        protocol = dataclasses.replace(protocol, limit=limit)
    resolved = [s if isinstance(s, Suite) else get_suite(s) for s in suites]
    out: dict[str, Any] = {
        "config": {"protocol": protocol.to_dict(), "suites": {s.name: s.describe() for s in resolved}},
        "suites": {},
        "problems": {},
    }
    for suite in resolved:
        start = time.perf_counter()
        metrics, records = run_suite(engine, tokenizer, suite, protocol, allow_hub)
        metrics["seconds"] = time.perf_counter() - start
        out["suites"][suite.name] = metrics
        out["problems"][suite.name] = records
        if log is not None:
            log(f"{suite.name}: pass@1 {metrics.get('pass@1', float('nan')):.4f} on {metrics['problems']} problems "
                f"x {metrics['n_samples']} samples ({metrics['seconds']:.1f}s)")
    return out


def flat_metrics(results: dict[str, Any], prefix: str = "eval") -> dict[str, float]:
    """Scalar metrics of ``evaluate_suites`` results as ``{"<prefix>/<suite>/<metric>": value}``.

    Intervals become ``..._low``/``..._high``; breakdowns and the template are left out.
    """
    flat: dict[str, float] = {}
    for name, metrics in results["suites"].items():
        for key, value in metrics.items():
            if isinstance(value, bool) or key == "seconds":
                continue
            if isinstance(value, (int, float)):
                flat[f"{prefix}/{name}/{key}"] = float(value)
            elif key.endswith("_ci95") and isinstance(value, list):
                flat[f"{prefix}/{name}/{key}_low"], flat[f"{prefix}/{name}/{key}_high"] = map(float, value)
    return flat


# --------------------------------------------------------------------------- self-consistency


def _boxed(gold: Any) -> str:
    return f"\\boxed{{{gold}}}"


def self_consistency(suite: Suite, problems: Sequence[dict], protocol: EvalProtocol | None = None) -> dict[str, Any]:
    """Feed the data's own answers through the harness's scoring, as if they were completions.

    Returns rates over problems (``None`` where the suite has no reference solutions):
    ``solution`` (each reference solution scored against its own gold; should be ~1),
    ``boxed_gold`` (``\\boxed{gold}``; should be 1), ``shifted_gold`` and ``shifted_solution``
    (problem i+1's boxed gold / solution scored against problem i's gold, over the
    ``shifted_pairs`` neighbours whose gold strings differ; should be ~0),
    plus ``solution_failures``: ``[{"index", "id", "gold", "extracted"}]`` for the solutions
    that did not score.
    """
    protocol = protocol or EvalProtocol()
    count = len(problems)
    golds = [p["gold"] for p in problems]
    sols = [p["solution"] for p in problems]
    has_sol = count > 0 and all(s is not None for s in sols)

    def rate(texts: Sequence[str], targets: Sequence[Any]) -> float:
        hits = sum(bool(score_text(t, g, protocol)[1]) for t, g in zip(texts, targets, strict=True))
        return hits / max(len(texts), 1)

    # Neighbours with the very same gold string (gsm8k has 15 such pairs, amc23 3) are left out
    # of the shifted checks: matching there is right, not a false positive.
    pairs = [i for i in range(count - 1) if str(golds[i]) != str(golds[i + 1])]
    out: dict[str, Any] = {"suite": suite.name, "problems": count,
                           "boxed_gold": rate([_boxed(g) for g in golds], golds),
                           "shifted_pairs": len(pairs),
                           "shifted_gold": rate([_boxed(golds[i + 1]) for i in pairs], [golds[i] for i in pairs]),
                           "solution": None, "shifted_solution": None, "solution_failures": []}
    if has_sol:
        verdicts = [score_text(s, g, protocol) for s, g in zip(sols, golds, strict=True)]
        out["solution"] = sum(bool(v) for _, v in verdicts) / count
        out["shifted_solution"] = rate([sols[i + 1] for i in pairs], [golds[i] for i in pairs])
        out["solution_failures"] = [{"index": p["index"], "id": p["id"], "gold": p["gold"], "extracted": a}
                                    for p, (a, v) in zip(problems, verdicts, strict=True) if not v]
    return out


__all__ = [
    "self_consistency",
    "TEMPLATES",
    "EvalProtocol",
    "evaluate",
    "evaluate_suites",
    "flat_metrics",
    "render",
    "run_suite",
    "score_problem",
    "score_text",
    "summarize",
]
