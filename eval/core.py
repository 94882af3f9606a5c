"""Score a rollout engine: on a list of problems (``evaluate``, the trainer's held-out eval),
on benchmark suites (``evaluate_suites``, the CLI and periodic evaluation) and on a task of the
user's with the user's rewards (``run_task``, the CLI's ``--data``/``--reward``).

The held-out eval and a task call their rewards exactly as training does (``score_samples``:
the same completion form, every dataset column), so any training reward can score them.

Everything here talks to the engine through the ``RolloutEngine`` protocol only, so the
transformers engine and a vLLM engine are interchangeable.

With tools (``tools``: a :class:`~rlreason.rollout.tools.rollouts.ToolRollouts`, the run's tools
and environments) every function here generates multi-turn rollouts instead
(``ToolRollouts.generate``: each rollout's episode started, its prompt rendered with its tools,
the turns run as training runs them): a reward then gets the exchange as its completion (the
assistant and tool turns, as TRL passes it), the suites score the exchange's final answer (the
last assistant turn's text, never a tool's output), and records keep each exchange's messages.

Scoring goes through a :class:`~rlreason.rewards.runner.RewardRunner`, the path training
rewards take, so evaluation has training's failure policy: a reward call that hangs, raises,
blows its memory cap or kills its worker is stopped, and only the completions involved are
scored wrong and counted (``score_failures``). Build the runners once, early (a ``"fork"``
runner forks when built), with :func:`heldout_scorer`, :func:`suite_scorer` and
:func:`task_scorer`, and close them when done.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from rlreason.data import INTERNAL_COLUMNS, prompt_messages
from rlreason.eval.code import CodeScoring, run_code_suite
from rlreason.eval.metrics import breakdown, code_metrics, maj_at_k, suite_metrics, task_metrics, wilson_interval
from rlreason.eval.render import (
    BUDGET,
    budget_line,
    budget_record,
    fit_budget,
    generate_within,
    prompt_ids,
    render,
    seed_all,
)
from rlreason.eval.suites import (
    SUITES,
    TEMPLATES,
    Suite,
    Template,
    get_suite,
    get_template,
    load_problems,
    load_rows,
)
from rlreason.rewards import completion_text
from rlreason.rewards.format import format_reward
from rlreason.rewards.math import RULES, extract_answer, verify
from rlreason.rewards.runner import MESSAGES_COLUMN, RewardOutput, RewardRunner, reward_inputs
from rlreason.rollout.base import RolloutEngine, Sample, SamplingConfig
from rlreason.rollout.tools.rollouts import ToolRollouts

# An evaluation must score every completion it can: a reward that hangs on many completions
# costs time, never the rest of the eval. The runner still gives a function up for the batch
# after 2 * num_workers timeouts with no call succeeding (a reward that hangs on everything).
_EVAL_MAX_TIMEOUTS = 1_000_000


def heldout_scorer(accuracy_fn: Callable, format_fn: Callable | None = None, **runner_kwargs: Any) -> RewardRunner:
    """The runner :func:`evaluate` scores with: ``accuracy_fn``, then ``format_fn`` if given.

    ``runner_kwargs`` go to :class:`RewardRunner` (``num_workers``, ``timeout_s``, ``memory_mb``,
    ``in_process``, ``start_method``...); ``max_timeouts`` defaults to no practical limit, so
    many pathological completions cost time but never the rest of the eval.
    """
    runner_kwargs.setdefault("max_timeouts", _EVAL_MAX_TIMEOUTS)
    return RewardRunner([accuracy_fn] if format_fn is None else [accuracy_fn, format_fn], **runner_kwargs)


def task_scorer(funcs: Sequence[Callable], **runner_kwargs: Any) -> RewardRunner:
    """The runner :func:`run_task` scores with: a task's own reward functions (the first decides
    what is correct), with :func:`heldout_scorer`'s defaults."""
    runner_kwargs.setdefault("max_timeouts", _EVAL_MAX_TIMEOUTS)
    return RewardRunner(list(funcs), **runner_kwargs)


def _check_scorer(scorer: Any, sizes: tuple[int, ...] | None, build: str) -> None:
    count = len(scorer.funcs) if isinstance(scorer, RewardRunner) else 0
    if not count or (sizes is not None and count not in sizes):
        raise TypeError(f"expected a RewardRunner built with {build}, got {scorer!r}: scoring goes through "
                        "the reward runner (timeouts, crash isolation, memory cap)")


def _value(v: float) -> float | None:
    return None if math.isnan(v) else v


def final_text(sample: Sample) -> str:
    """The text a suite scores: a tool exchange's final answer (its last assistant turn: an answer
    copied from a tool's output counts only once the model wrote it), else the completion."""
    return completion_text([m for m in sample.messages if m["role"] == "assistant"]) if sample.messages else sample.text


def _reset_row(row: dict) -> dict:
    """What an environment's ``reset(**row)`` gets: the dataset's columns, not those ``prepare`` adds."""
    return {k: v for k, v in row.items() if k not in INTERNAL_COLUMNS}


def _generate(engine: RolloutEngine, rows: Sequence[dict], n: int, sampling: SamplingConfig,
              tools: ToolRollouts | None) -> tuple[list[list[Sample]], list[list[dict]] | None]:
    """``n`` samples per prepared row (``prompt_ids``, and with tools its chat messages): single-turn
    from the engine, or multi-turn rollouts with ``tools``. -> (the groups, with tools the messages
    each rollout's prompt was rendered from [rows * n], else None)."""
    if tools is None:
        return engine.generate([r["prompt_ids"] for r in rows], n, sampling), None
    if rows and rows[0].get(MESSAGES_COLUMN) is None:
        raise ValueError("tools need prompts rendered by a chat template (the tool list and the calls are the "
                         "template's); these rows were rendered as plain text (config key 'use_chat_template' or "
                         "--chat-template off)")
    groups, _, prompts = tools.generate(engine, [_reset_row(r) for r in rows], [r[MESSAGES_COLUMN] for r in rows],
                                        n, sampling)
    return groups, prompts


def score_samples(scorer: RewardRunner, rows: Sequence[dict], groups: Sequence[Sequence[Sample]], *,
                  prompt_column: str = "prompt", plain_text: bool = False,
                  shared: dict[str, Any] | None = None, prompts: list[list[dict]] | None = None) -> RewardOutput:
    """Score the engine's samples of ``rows`` (``groups[i]``: row ``i``'s samples, as many for
    every row) with ``scorer``, in the form training's reward call has (``GRPOTrainer.rollout``):
    the arguments are :func:`~rlreason.rewards.runner.reward_inputs`' (a string completion for a
    string prompt, ``[{"role": "assistant", "content": ...}]`` for a conversational one, every
    column of the rows but the prompt and those ``rlreason.data.prepare`` adds as a list, plus
    ``completion_ids``), ``plain_text`` is the config's ``rewards_plain_text`` and ``shared``
    what every call gets unchanged (training passes ``trainer_state``). ``rows`` as ``prepare``
    makes them. So any training reward, a user's included, scores the held-out problems. Tool
    exchanges (samples with ``messages``) are passed as training passes them: the exchange as the
    completion, and ``prompts`` (one per completion, what each rollout was rendered from) as the
    prompts."""
    n = len(groups[0]) if groups else 1
    samples = [s for g in groups for s in g]
    # tool exchanges: the completion is the exchange itself (assistant and tool turns), as TRL passes it
    exchanges = [s.messages for s in samples] if samples and all(s.messages is not None for s in samples) else None
    prompts, completions, columns = reward_inputs(list(rows), [s.text for s in samples],
                                                  [s.token_ids for s in samples], n, prompt_column,
                                                  skip=INTERNAL_COLUMNS, plain_text=plain_text, exchanges=exchanges,
                                                  prompt_messages=prompts)
    return scorer.score(prompts, completions, columns, shared=shared)


# The sums the held-out metrics are computed from: :func:`evaluate` returns them per process, and
# GRPOTrainer.evaluate adds them over processes before :func:`heldout_metrics`.
HELDOUT_SUMS = ("correct", "n", "formatted", "tokens", "truncated", "score_failures", "reward_sum", "rewarded",
                "tool_rollouts", "tool_calls", "tool_failures")


def heldout_metrics(sums: dict[str, float]) -> dict[str, float]:
    """The held-out evaluation's ``eval/...`` metrics from :data:`HELDOUT_SUMS` (added over
    processes): accuracy (a completion is correct when the first reward gave it >= 1.0) with its
    95% Wilson interval, the format rate (0 without a format reward), mean completion length,
    truncated fraction, scoring failures, and ``eval/mean_reward``, the first reward's mean over
    the completions it scored (NaN when it scored none: every value None or failed). With tools,
    TRL's two tool metrics of the held-out rollouts: ``eval/tools/call_frequency`` (tool calls per
    completion) and ``eval/tools/failure_frequency`` (failed calls per call)."""
    n, correct = int(sums["n"]), int(sums["correct"])
    lo, hi = wilson_interval(correct, n)
    per = max(n, 1)
    return {"eval/accuracy": correct / per, "eval/accuracy_ci_low": lo, "eval/accuracy_ci_high": hi,
            "eval/correct": correct, "eval/n": n, "eval/format_rate": sums["formatted"] / per,
            "eval/mean_length": sums["tokens"] / per, "eval/truncated_frac": sums["truncated"] / per,
            "eval/score_failures": int(sums["score_failures"]),
            "eval/mean_reward": sums["reward_sum"] / sums["rewarded"] if sums["rewarded"] else math.nan,
            **({"eval/tools/call_frequency": sums["tool_calls"] / sums["tool_rollouts"],
                "eval/tools/failure_frequency": sums["tool_failures"] / max(sums["tool_calls"], 1)}
               if sums["tool_rollouts"] else {})}


# What the trainer's held-out evaluation logs and checkpoints (GRPOTrainer.evaluate), each a name
# metric_for_best_model may give (with the suites' "suite/<name>/<metric>": suite_metric_names).
HELDOUT_METRICS = tuple(heldout_metrics(dict.fromkeys(HELDOUT_SUMS, 0.0)))


def evaluate(
    engine: RolloutEngine,
    rows: Sequence[dict],
    scorer: RewardRunner,
    sampling: SamplingConfig,
    *,
    prompt_column: str = "prompt",
    plain_text: bool = False,
    shared: dict[str, Any] | None = None,
    n: int = 1,
    tools: ToolRollouts | None = None,
) -> dict:
    """Greedy (or sampled) accuracy of ``engine`` on ``rows`` with a 95% Wilson interval: the
    trainer's held-out evaluation. ``n`` samples per problem (TRL's ``num_generations_eval``; with a
    sampling ``sampling``): the accuracy is then their mean, pass@1 estimated from n samples, and
    ``n``/``correct``/the interval count completions (samples of one problem are correlated: the
    interval is narrower than one over problems would be).

    ``rows``: held-out problems as ``rlreason.data.prepare`` makes them (``prompt_ids`` and the
    dataset's columns). ``scorer``: a runner over the accuracy reward and optionally the format
    reward, in that order (:func:`heldout_scorer`); the accuracy reward may be any reward
    function, a user's included: both are called as training calls its rewards
    (:func:`score_samples`; ``prompt_column``, ``plain_text`` and ``shared`` as there). A
    completion is correct when the accuracy reward gave it >= 1.0; one whose accuracy call failed
    (raised, timed out, ran out of memory, crashed its worker) is wrong and counted in
    ``score_failures``; one whose format call failed is unformatted, counted in ``format_failures``.

    Returns {"accuracy", "accuracy_ci95", "correct", "n", "mean_reward", "format_rate",
    "mean_length", "truncated_frac", "samples", "score_failures", "format_failures", "sums"}
    where samples holds the first few (prompt, completion, answer, score), ``mean_reward`` the
    accuracy reward's mean over the completions it scored (None if none), ``sums`` the
    :data:`HELDOUT_SUMS` (what :func:`heldout_metrics` turns into the trainer's metrics);
    ``format_rate`` and ``format_failures`` only with a format reward. ``tools``: the run's
    tools (module docstring); the samples then show each exchange's ``messages`` and the sums
    count ``tool_rollouts`` / ``tool_calls`` / ``tool_failures`` (``eval/tools/call_frequency`` and
    ``eval/tools/failure_frequency`` in :func:`heldout_metrics`).
    """
    _check_scorer(scorer, (1, 2), "heldout_scorer(accuracy_fn, format_fn)")
    rows = list(rows)
    if n < 1 or (n > 1 and sampling.greedy):
        raise ValueError(f"n must be >= 1, and greedy decoding gives one sample per problem; got n={n}, "
                         f"temperature {sampling.temperature}")
    groups, prompts = _generate(engine, rows, n, sampling, tools)
    samples = [s for g in groups for s in g]
    texts = [s.text for s in samples]
    scored = score_samples(scorer, rows, groups, prompt_column=prompt_column, plain_text=plain_text, shared=shared,
                           prompts=prompts)
    accuracy_name = scorer.names[0]
    # NaN: None ("does not apply") or a failure; neither is a correct answer.
    scores = [_value(v) for v in scored.per_func[accuracy_name].tolist()]
    given = [s for s in scores if s is not None]
    n = len(texts)  # completions: problems * samples per problem
    sums = {"correct": sum(1 for s in given if s >= 1.0), "n": n, "formatted": 0,
            "tokens": sum(len(s.token_ids) for s in samples),
            "truncated": sum(s.finish_reason == "length" for s in samples),
            "score_failures": scored.failures[accuracy_name], "reward_sum": math.fsum(given), "rewarded": len(given),
            "tool_rollouts": n if tools is not None else 0,
            "tool_calls": sum((s.tool_stats or {}).get("calls", 0) for s in samples),
            "tool_failures": sum((s.tool_stats or {}).get("failures", 0) for s in samples)}
    out = {
        "accuracy": sums["correct"] / max(n, 1),
        "accuracy_ci95": list(wilson_interval(sums["correct"], n)),
        "correct": sums["correct"],
        "n": n,
        "mean_reward": sums["reward_sum"] / len(given) if given else None,
        "mean_length": sums["tokens"] / max(n, 1),
        "truncated_frac": sums["truncated"] / max(n, 1),
        "samples": [
            {"prompt": r.get(prompt_column), "completion": t, "answer": r.get("answer"), "score": s,
             **({"messages": x.messages} if x.messages is not None else {})}
            for r, t, s, x in list(zip([r for r in rows for _ in groups[0]], texts, scores, samples, strict=True))[:5]
        ],
        "score_failures": sums["score_failures"],
        "sums": sums,
    }
    if len(scorer.names) > 1:
        format_name = scorer.names[1]
        fmt = scored.per_func[format_name].tolist()
        sums["formatted"] = sum(1 for f in fmt if not math.isnan(f) and f)
        out["format_rate"] = sums["formatted"] / max(n, 1)
        out["format_failures"] = scored.failures[format_name]
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
    ``rlreason.rewards.math.extract_answer``) and compared to the gold with ``verify``, in the
    scorer's worker processes (:func:`suite_scorer`: its timeout, memory cap and crash
    isolation; a completion whose scoring failed is wrong and counted in ``score_failures``).

    ``name``: the named protocol the settings came from (``rlreason.eval.protocols``: ``default``,
    ``greedy``, ``open-r1`` or a YAML file's); it is recorded, it changes nothing by itself.
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
    extra: dict[str, Any] = field(default_factory=dict)  # free-form notes recorded with the config
    # the CLI notes in ``extra`` the protocol's description and the fields its flags overrode
    name: str = "default"

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

    def template_for(self, suite: Suite | None) -> Template:
        """The template ``suite`` is run with: the protocol's choice or the suite's default (a
        task of the user's, ``None``: ``plain``, the problem as is, as training's default), with
        ``user_template``/``system_prompt`` overrides applied."""
        base = get_template(self.template or (suite.default_template if suite is not None else "plain"))
        return dataclasses.replace(
            base,
            user=self.user_template if self.user_template is not None else base.user,
            system=(self.system_prompt or None) if self.system_prompt is not None else base.system,
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------- scoring


def follows_format(text: str, answer_format: str, answer: str | None) -> bool:
    """Whether a completion followed a template's answer format (``Template.format``)."""
    if answer_format == "think_answer":
        return format_reward(prompts=[None], completions=[text])[0] == 1.0
    if answer_format == "boxed":
        return extract_answer(text, rules=("boxed",)) is not None
    return answer is not None


# The log_extra column score_answers reports through: (answer, verdict, formatted) per completion.
# A completion whose call failed has nothing logged there (None): that is how failures are told
# apart from a gold that cannot be parsed (verdict None), which is not a failure.
SCORED = "eval_scored"


def score_answers(
    prompts: list,
    completions: list,
    gold: list,
    extract_rules: Sequence[str] | None = RULES,
    extract_fallback: str | Sequence[str] | None = None,
    answer_format: str | None = None,
    log_extra: Callable[[str, list], None] | None = None,
    **kwargs: Any,
) -> list[float | None]:
    """The suites' scoring reward: 1.0 if a completion's answer matches its ``gold``, else 0.0;
    None where the gold cannot be parsed. Runs in the scorer's workers (:func:`suite_scorer`).

    The answer is extracted with ``extract_rules``/``extract_fallback``; ``extract_rules=None``
    means the completions already are answers (majority voting compares two answers: the gold
    is the first). Logs ``(answer, verdict, formatted)`` per completion under :data:`SCORED`,
    ``formatted`` per :func:`follows_format` (None without ``answer_format``).
    """
    scored = []
    for text, g in zip(completions, gold, strict=True):
        answer = text if extract_rules is None else extract_answer(text, extract_rules, extract_fallback)
        verdict = verify(g, answer)
        formatted = None if answer_format is None else follows_format(text, answer_format, answer)
        scored.append((answer, verdict, formatted))
    if log_extra is not None:
        log_extra(SCORED, scored)
    return [None if v is None else float(v) for _, v, _ in scored]


def suite_scorer(score_fn: Callable = score_answers, **runner_kwargs: Any) -> RewardRunner:
    """The runner :func:`evaluate_suites` and :func:`self_consistency` score with.

    ``runner_kwargs`` go to :class:`RewardRunner` (``num_workers``, ``timeout_s`` per call,
    ``memory_mb``, ``in_process``, ``start_method``...). Calls score chunks of at most 64
    completions (``chunk_size="auto"``), spread over the workers; a chunk that fails is rescored
    one completion per call, so a pathological completion costs about two timeouts and only
    itself. ``score_fn`` replaces :func:`score_answers` (same arguments and logged column).
    """
    runner_kwargs.setdefault("chunk_size", "auto")
    runner_kwargs.setdefault("max_timeouts", _EVAL_MAX_TIMEOUTS)
    return RewardRunner([score_fn], **runner_kwargs)


def score_completions(
    scorer: RewardRunner,
    texts: Sequence[str],
    golds: Sequence[Any],
    protocol: EvalProtocol,
    answer_format: str | None = None,
    given_answers: bool = False,
) -> list[tuple[str | None, bool | None, bool | None] | None]:
    """(extracted answer, verdict, formatted) of each completion, scored by ``scorer`` in one
    batch; None where scoring failed (count them: the completion is wrong). The verdict is None
    when the gold is unparseable. ``given_answers``: the texts already are answers."""
    _check_scorer(scorer, (1,), "suite_scorer()")
    shared = {"extract_rules": None if given_answers else tuple(protocol.extract_rules),
              "extract_fallback": protocol.extract_fallback, "answer_format": answer_format}
    out = scorer.score([None] * len(texts), list(texts), {"gold": list(golds)}, shared=shared)
    logged = out.extra.get(SCORED, [None] * len(texts))
    return [None if s is None else tuple(s) for s in logged]


def score_text(text: str, gold: Any, protocol: EvalProtocol) -> tuple[str | None, bool | None]:
    """(extracted answer, verdict) of one completion, in this process with no time limit: for
    checking by hand; evaluation scores through :func:`score_completions`."""
    answer = extract_answer(text, protocol.extract_rules, protocol.extract_fallback)
    return answer, verify(gold, answer)


def same_answer(a: str, b: str) -> bool:
    """Answer equivalence for majority voting: ``b`` verified against ``a`` read as a gold.
    In this process with no time limit; the suites look the pairs up in :func:`vote_table`."""
    return bool(verify(a, b))


def vote_pairs(answers: Sequence[str | None]) -> set[tuple[str, str]]:
    """Every ``(representative, answer)`` pair ``metrics.group_answers`` can ask ``same`` about.

    A representative is a group's first member, so it occurs before the answer it is compared
    with: the pairs (x, y) where x first occurs before y last occurs. Identical strings are
    included, since ``same(a, a)`` is False when ``a`` cannot be parsed.
    """
    first: dict[str, int] = {}
    last: dict[str, int] = {}
    for i, a in enumerate(answers):
        if a is not None:
            first.setdefault(a, i)
            last[a] = i
    return {(x, y) for x, fx in first.items() for y, ly in last.items() if fx < ly}


def vote_table(scorer: RewardRunner, records: Sequence[dict], protocol: EvalProtocol
               ) -> tuple[Callable[[str, str], bool], int]:
    """``same(a, b)`` for majority voting over ``records``' answers, with every pair it will be
    asked about verified by ``scorer`` in one batch -> (same, pairs whose scoring failed, which
    count as different answers)."""
    width = max((k for k in protocol.ks if records and 1 <= k <= len(records[0]["answers"])), default=1)
    pairs = sorted(set().union(*(vote_pairs(r["answers"][:width]) for r in records))) if width > 1 else []
    scored = score_completions(scorer, [b for _, b in pairs], [a for a, _ in pairs], protocol,
                               given_answers=True) if pairs else []
    table = {pair: bool(s and s[1]) for pair, s in zip(pairs, scored, strict=True)}

    def same(a: str, b: str) -> bool:
        return table[(a, b)]

    return same, sum(s is None for s in scored)


def summarize(records: Sequence[dict], ks: Sequence[int],
              same: Callable[[str, str], bool] = same_answer) -> dict[str, Any]:
    """A suite's metrics from its per-problem records, with subject/level breakdowns where present.
    ``same``: answer equivalence for maj@k (:func:`vote_table` in a suite run)."""
    out = suite_metrics(records, ks, same)
    out["gold_unparseable"] = sum(r["gold_unparseable"] for r in records)
    out["score_failures"] = sum(r.get("score_failures", 0) for r in records)
    for key in ("subject", "level"):
        parts = breakdown(records, key)
        if parts:
            out[f"by_{key}"] = parts
    return out


# --------------------------------------------------------------------------- suites


def run_suite(
    engine: RolloutEngine,
    tokenizer: Any,
    suite: Suite,
    protocol: EvalProtocol,
    scorer: RewardRunner,
    allow_hub: bool = True,
    tools: ToolRollouts | None = None,
    code: CodeScoring | None = None,
    context: int | None = None,
) -> tuple[dict[str, Any], list[dict]]:
    """Generate one suite and score it with ``scorer`` (:func:`suite_scorer`). -> (metrics,
    per-problem records). A code suite (``suite.scoring == "code"``, HumanEval) runs its programs
    in the sandbox instead (``rlreason.eval.code.run_code_suite``, with ``code``'s settings;
    records and metrics as it describes them). ``context``: the tokens the model holds; the
    budget is then capped at it minus the suite's longest prompt (``render.fit_budget``; not with
    ``tools``, whose rollouts cap each turn) and the metrics carry it under ``render.BUDGET``.

    A record: ``{"suite", "index", "id", "subject", "level", "prompt", "gold", "completions",
    "answers", "correct", "formatted", "lengths", "truncated", "gold_unparseable",
    "score_failures", "maj"}`` (``maj``: the problem's ``{"maj@k": 0.0 or 1.0}`` for each k <= n);
    a completion whose scoring failed has answer None, is wrong and unformatted, and counts in
    ``score_failures``. With ``tools`` (module docstring) each
    completion is a tool exchange: its final answer is scored, the record's ``prompt`` is the
    first rollout's (rendered with its tools) and it adds ``messages`` (each exchange) and
    ``tool_calls`` / ``tool_failures`` (per completion).
    """
    if suite.scoring == "reward":
        raise ValueError(f"suite {suite.name!r} is scored by its reward_funcs: run it with run_reward_suite (its "
                         f"own task_scorer), as the eval CLI does")
    if suite.scoring == "code":
        if tools is not None:
            raise ValueError(f"suite {suite.name!r} is a code suite: its programs are checked by running them, "
                             f"with no tools; evaluate it without --tools / --environment-factory")
        return run_code_suite(engine, tokenizer, suite, protocol, code, allow_hub, context)
    problems, template, prompts, ids = suite_prompts(tokenizer, suite, protocol, allow_hub)
    lengths = [len(i) for i in ids]
    budget, too_long = fit_budget(protocol.max_tokens, lengths, None if tools else context)
    sampling = dataclasses.replace(protocol.sampling(), max_tokens=budget)
    seed_all(protocol.seed)
    if tools is not None and problems:
        if protocol.chat_template == "off":
            raise ValueError("tools need the chat template (it renders the tool list and the calls); "
                             "chat_template is 'off'")
        messages = [prompt_messages(p["row"], prompt_column=suite.problem_column, template=template.user,
                                    system_prompt=template.system) for p in problems]
        groups, rollout_ids, _ = tools.generate(engine, [p["row"] for p in problems], messages, protocol.n,
                                                sampling)
        prompts = [tokenizer.decode(rollout_ids[i * protocol.n]) for i in range(len(problems))]
    else:
        groups = generate_within(engine, ids, protocol.n, sampling, too_long) if problems else []
    # One scorer batch for the whole suite: the workers score chunks of it in parallel.
    texts = [final_text(s) for group in groups for s in group]
    golds = [p["gold"] for p, group in zip(problems, groups, strict=True) for _ in group]
    scored = score_completions(scorer, texts, golds, protocol, template.format)
    records = []
    for i, (p, prompt, group) in enumerate(zip(problems, prompts, groups, strict=True)):
        mine = scored[i * protocol.n:(i + 1) * protocol.n]
        ok = [s for s in mine if s is not None]
        records.append({
            "suite": suite.name, "index": p["index"], "id": p["id"], "subject": p["subject"], "level": p["level"],
            "prompt": prompt, "gold": p["gold"], "completions": [s.text for s in group],
            "answers": [s[0] if s else None for s in mine],
            "correct": [bool(s and s[1]) for s in mine],
            "gold_unparseable": any(s[1] is None for s in ok),
            "formatted": [bool(s and s[2]) for s in mine],
            "score_failures": len(mine) - len(ok),
            "lengths": [len(s.token_ids) for s in group],
            "truncated": [s.finish_reason == "length" for s in group],
            **(_tool_fields(group) if tools is not None else {}),
        })
    same, vote_failures = vote_table(scorer, records, protocol)
    for r in records:  # each problem's maj@k: the results' per-sample details and the maj@k stderr need them
        r["maj"] = {f"maj@{k}": maj_at_k(r["answers"], r["correct"], k, same)
                    for k in sorted(set(protocol.ks)) if 1 <= k <= protocol.n}
    metrics = summarize(records, protocol.ks, same)
    metrics["vote_failures"] = vote_failures
    metrics["template"] = dataclasses.asdict(template)
    if context is not None and tools is None:
        metrics[BUDGET] = budget_record(protocol.max_tokens, budget, lengths, context, too_long,
                                        [p["id"] for p in problems])
    return metrics, records


def suite_prompts(tokenizer: Any, suite: Suite, protocol: EvalProtocol, allow_hub: bool = True
                  ) -> tuple[list[dict], Template, list[str], list[list[int]]]:
    """An answer suite's problems, its template, the rendered prompts and their token ids."""
    template = protocol.template_for(suite)
    problems = load_problems(suite, protocol.limit, allow_hub)
    prompts = [render(p, suite, template, tokenizer, protocol.chat_template) for p in problems]
    return problems, template, prompts, prompt_ids(prompts, tokenizer)


def _tool_fields(group: Sequence[Sample]) -> dict[str, list]:
    """A record's tool columns: each exchange's messages, tool calls and failed calls."""
    return {"messages": [s.messages for s in group],
            "tool_calls": [(s.tool_stats or {}).get("calls", 0) for s in group],
            "tool_failures": [(s.tool_stats or {}).get("failures", 0) for s in group]}


def evaluate_suites(
    engine: RolloutEngine,
    tokenizer: Any,
    suites: Sequence[str | Suite],
    protocol: EvalProtocol | None = None,
    *,
    scorer: RewardRunner,
    limit: int | None = None,
    allow_hub: bool = True,
    log: Callable[[str], None] | None = None,
    tools: ToolRollouts | None = None,
    code: CodeScoring | None = None,
    context: int | None = None,
) -> dict[str, Any]:
    """Evaluate ``engine`` on benchmark suites (the trainer's periodic eval and the CLI).

    Args:
        engine: any ``RolloutEngine`` (the trainer's own engine works as is).
        tokenizer: the model's tokenizer (renders and tokenizes prompts).
        suites: suite names (see ``rlreason.eval.suites.SUITES``) or ``Suite`` objects.
        protocol: sampling, prompt and scoring settings; default greedy, n=1, 1024 tokens.
        scorer: the runner that scores completions (:func:`suite_scorer`); the caller owns it
            (builds it once, closes it).
        limit: overrides ``protocol.limit`` (problems per suite) when given.
        allow_hub: whether a suite without a local file may be fetched from the hub.
        log: called with one progress line per suite (e.g. ``print``).
        tools: the tools the model may call (module docstring); None: single-turn completions.
        code: how code suites (HumanEval) run their programs in the sandbox
            (``rlreason.eval.code.CodeScoring``; None: its defaults, bubblewrap).
        context: the tokens the model holds (prompt and completion; the CLI's ``context_length``):
            each suite's budget is capped at it minus its longest prompt (``render.fit_budget``;
            a prompt as long as the context is not generated and scored wrong), its config
            records ``max_tokens``, ``max_tokens_effective``, ``context_length``,
            ``longest_prompt_tokens`` and ``prompts_too_long`` (their ids) and ``log`` gets a line
            when the budget was capped or prompts did not fit.
            None: no cap (the trainer's, whose budget fits its context by construction).

    Returns:
        ``{"config": {"protocol", "suites"}, "suites": {name: metrics}, "problems": {name: [records]}}``;
        metrics as ``summarize`` (``pass@1``, ``pass@1_ci95``, ``pass@k``, ``maj@k``,
        ``mean_length``, ``truncation_rate``, ``format_rate``, ``answer_rate``, breakdowns,
        ``score_failures``: completions whose scoring failed, ``vote_failures``: answer pairs
        of maj@k whose comparison failed). ``config["scoring"]`` records the scorer's settings.
        ``flat_metrics`` turns it into ``{"eval/<suite>/<metric>": float}`` for logging.
    """
    protocol = protocol or EvalProtocol()
    if limit is not None:
        protocol = dataclasses.replace(protocol, limit=limit)
    _check_scorer(scorer, (1,), "suite_scorer()")
    resolved = [s if isinstance(s, Suite) else get_suite(s) for s in suites]
    out: dict[str, Any] = {
        "config": {"protocol": protocol.to_dict(), "suites": {s.name: s.describe() for s in resolved},
                   "scoring": scorer.settings()},
        "suites": {},
        "problems": {},
    }
    for suite in resolved:
        start = time.perf_counter()
        metrics, records = run_suite(engine, tokenizer, suite, protocol, scorer, allow_hub, tools, code, context)
        budget = metrics.pop(BUDGET, None)
        metrics["seconds"] = time.perf_counter() - start
        out["suites"][suite.name] = metrics
        out["problems"][suite.name] = records
        if budget is not None:
            out["config"]["suites"][suite.name].update(budget)
            line = budget_line(suite.name, budget)
            if line is not None and log is not None:
                log(line)
        if log is not None:
            log(f"{suite.name}: pass@1 {metrics.get('pass@1', float('nan')):.4f} on {metrics['problems']} problems "
                f"x {metrics['n_samples']} samples ({metrics['seconds']:.1f}s)")
    return out


def suite_metric_names(suites: Sequence[str], protocol: EvalProtocol | None = None,
                       prefix: str = "suite") -> list[str]:
    """The ``<prefix>/<suite>/<metric>`` names a run of ``suites`` under ``protocol`` logs (the
    trainer's: greedy, pass@1), as :func:`flat_metrics` of :func:`run_suite`'s metrics: what a
    metric name can be checked against before any suite runs."""
    protocol = protocol or EvalProtocol()
    n = protocol.n
    record = {"correct": [True] * n, "answers": ["1"] * n, "lengths": [1] * n, "truncated": [False] * n,
              "formatted": [True] * n, "gold_unparseable": False, "statuses": ["ok"] * n, "score_failures": 0}
    metrics = {**summarize([record], protocol.ks), "vote_failures": 0}  # as run_suite adds it
    coded = code_metrics([record], protocol.ks)  # a code suite's (run_code_suite)
    per_suite = {name: coded if getattr(SUITES.get(name), "scoring", None) == "code" else metrics
                 for name in suites}
    return list(flat_metrics({"suites": per_suite}, prefix=prefix))


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


# --------------------------------------------------------------------------- a task of the user's


def task_rows(data: Any, tokenizer: Any, protocol: EvalProtocol, *, prompt_column: str = "prompt",
              source: str = "the dataset", suite: Suite | None = None) -> list[dict]:
    """A task's problems (a ``datasets.Dataset``, its first ``protocol.limit`` rows) rendered and
    tokenized as training renders them (``rlreason.data.prepare``, with the protocol's template,
    system prompt and chat-template setting; ``suite``: a reward suite's default template, else
    ``plain``): the rows :func:`run_task` takes. Errors name ``source``."""
    from rlreason.data import prepare

    if protocol.limit is not None and protocol.limit < len(data):
        data = data.select(range(protocol.limit))
    has_chat = bool(getattr(tokenizer, "chat_template", None))
    if protocol.chat_template == "on" and not has_chat:
        raise ValueError("chat_template='on' but the tokenizer has no chat template")
    template = protocol.template_for(suite)
    return list(prepare(data, prompt_column=prompt_column, answer_column=None, tokenizer=tokenizer,
                        use_chat_template=protocol.chat_template != "off", template=template.user,
                        system_prompt=template.system, source=source))


def run_task(engine: RolloutEngine, rows: Sequence[dict], scorer: RewardRunner, protocol: EvalProtocol, *,
             name: str, prompt_column: str = "prompt", plain_text: bool = False,
             tools: ToolRollouts | None = None, context: int | None = None) -> tuple[dict[str, Any], list[dict]]:
    """Generate ``protocol.n`` samples per problem of a task of the user's and score them with the
    task's own rewards (``scorer``, :func:`task_scorer`) as training scores them
    (:func:`score_samples`): the eval CLI's ``--data``/``--reward``. -> (metrics, per-problem
    records), as :func:`run_suite` returns them.

    ``rows`` as :func:`task_rows` makes them. A sample is correct when the first reward gave it
    >= 1.0 (the held-out evaluation's rule). A record: ``{"suite", "index", "id", "prompt",
    "columns", "completions", "rewards", "correct", "failed", "lengths", "truncated",
    "score_failures"}`` (``rewards``: each reward's values, None where it gave None or failed);
    the metrics are :func:`~rlreason.eval.metrics.task_metrics`'. With ``tools`` (module
    docstring) the rewards get each exchange and a record adds ``messages``, ``tool_calls`` and
    ``tool_failures`` (per completion). ``context``: as :func:`run_suite`'s.
    """
    _check_scorer(scorer, None, "task_scorer(reward_funcs)")
    rows = list(rows)
    lengths = [len(r["prompt_ids"]) for r in rows]
    budget, too_long = fit_budget(protocol.max_tokens, lengths, None if tools else context)
    seed_all(protocol.seed)
    sampling = dataclasses.replace(protocol.sampling(), max_tokens=budget)
    if tools is None:
        groups = generate_within(engine, [r["prompt_ids"] for r in rows], protocol.n, sampling, too_long)
        prompts = None
    else:
        groups, prompts = _generate(engine, rows, protocol.n, sampling, tools) if rows else ([], None)
    scored = score_samples(scorer, rows, groups, prompt_column=prompt_column, plain_text=plain_text, prompts=prompts)
    values = {fn: [_value(v) for v in t.tolist()] for fn, t in scored.per_func.items()}
    failed = scored.failed.tolist() if scored.failed is not None else [False] * len(scored.total)
    first = scorer.names[0]
    records = []
    for i, (row, group) in enumerate(zip(rows, groups, strict=True)):
        mine = slice(i * protocol.n, (i + 1) * protocol.n)
        records.append({
            "suite": name, "index": i, "id": i, "prompt": row.get("prompt_text", row.get(prompt_column)),
            "columns": {k: v for k, v in row.items() if k not in (prompt_column, *INTERNAL_COLUMNS)},
            "completions": [s.text for s in group],
            "rewards": {fn: v[mine] for fn, v in values.items()},
            "correct": [v is not None and v >= 1.0 for v in values[first][mine]],
            "failed": failed[mine],
            "score_failures": sum(failed[mine]),
            "lengths": [len(s.token_ids) for s in group],
            "truncated": [s.finish_reason == "length" for s in group],
            **(_tool_fields(group) if tools is not None else {}),
        })
    metrics = task_metrics(records, protocol.ks)
    if context is not None and tools is None:
        metrics[BUDGET] = budget_record(protocol.max_tokens, budget, lengths, context, too_long,
                                        list(range(len(rows))))
    return metrics, records


def reward_suite_data(suite: Suite, limit: int | None = None, allow_hub: bool = True) -> tuple[Any, list[Callable]]:
    """A reward suite (``scoring: reward``) checked before any model loads: (its first ``limit`` rows as
    a ``datasets.Dataset``, its ``reward_funcs`` built and checked against the rows' columns, as
    training checks its rewards against a dataset's). Errors (ValueError, FileNotFoundError) name the
    suite and the key or column at fault."""
    import datasets

    from rlreason.rewards.registry import RewardSpecError, build_rewards
    from rlreason.rewards.runner import refuse_reserved_columns

    rows = load_rows(suite, limit, allow_hub)
    data = datasets.Dataset.from_list(rows)
    if rows and suite.problem_column not in data.column_names:
        raise ValueError(f"suite {suite.name!r}: problem_column {suite.problem_column!r} is no column of its data; "
                         f"its columns are {', '.join(data.column_names)}")
    columns = set(data.column_names) - {suite.problem_column, *INTERNAL_COLUMNS}
    refuse_reserved_columns(columns, f"suite {suite.name!r}")
    try:
        funcs, _ = build_rewards(list(suite.reward_funcs), columns=columns | {"completion_ids"})
    except RewardSpecError as e:
        raise ValueError(f"suite {suite.name!r}: {e}") from None
    return data, funcs


def reward_suite_rows(suite: Suite, data: Any, tokenizer: Any, protocol: EvalProtocol) -> list[dict]:
    """A reward suite's problems (``data``, as :func:`reward_suite_data` gives it) rendered as a task's
    (:func:`task_rows`) with the suite's template: the rows :func:`run_reward_suite` takes."""
    return task_rows(data, tokenizer, protocol, prompt_column=suite.problem_column, source=f"suite {suite.name!r}",
                     suite=suite)


def run_reward_suite(engine: RolloutEngine, suite: Suite, rows: Sequence[dict], scorer: RewardRunner,
                     protocol: EvalProtocol, tools: ToolRollouts | None = None, context: int | None = None
                     ) -> tuple[dict[str, Any], list[dict]]:
    """A reward suite run as a task of the user's (:func:`run_task`): ``rows`` as
    :func:`reward_suite_rows` makes them, ``scorer`` the runner over its rewards (``task_scorer(funcs)``,
    ``funcs`` from :func:`reward_suite_data`); ``context`` as :func:`run_task`'s. -> (metrics, records)
    as :func:`run_task`'s, each record's ``id`` the id column's value when the suite names one."""
    metrics, records = run_task(engine, rows, scorer, protocol, name=suite.name, prompt_column=suite.problem_column,
                                tools=tools, context=context)
    if suite.id_column:
        for record in records:
            record["id"] = record["columns"].get(suite.id_column, record["index"])
    return metrics, records


# --------------------------------------------------------------------------- self-consistency


def _boxed(gold: Any) -> str:
    return f"\\boxed{{{gold}}}"


def self_consistency(suite: Suite, problems: Sequence[dict], scorer: RewardRunner,
                     protocol: EvalProtocol | None = None) -> dict[str, Any]:
    """Feed the data's own answers through the harness's scoring (``scorer``, as
    :func:`suite_scorer` builds it), as if they were completions.

    Returns rates over problems (``None`` where the suite has no reference solutions):
    ``solution`` (each reference solution scored against its own gold; should be ~1),
    ``boxed_gold`` (``\\boxed{gold}``; should be 1), ``shifted_gold`` and ``shifted_solution``
    (problem i+1's boxed gold / solution scored against problem i's gold, over the
    ``shifted_pairs`` neighbours whose gold strings differ; should be ~0),
    plus ``solution_failures``: ``[{"index", "id", "gold", "extracted"}]`` for the solutions
    that did not score, and ``score_failures``: texts whose scoring failed (scored wrong).
    """
    protocol = protocol or EvalProtocol()
    count = len(problems)
    golds = [p["gold"] for p in problems]
    sols = [p["solution"] for p in problems]
    has_sol = count > 0 and all(s is not None for s in sols)
    failures = 0

    def verdicts(texts: Sequence[str], targets: Sequence[Any]) -> list[tuple[str | None, bool]]:
        nonlocal failures
        scored = score_completions(scorer, texts, targets, protocol) if texts else []
        failures += sum(s is None for s in scored)
        return [(s[0], bool(s[1])) if s else (None, False) for s in scored]

    def rate(texts: Sequence[str], targets: Sequence[Any]) -> float:
        return sum(v for _, v in verdicts(texts, targets)) / max(len(texts), 1)

    # Neighbours with the very same gold string (gsm8k has 15 such pairs, amc23 3) are left out
    # of the shifted checks: matching there is right, not a false positive.
    pairs = [i for i in range(count - 1) if str(golds[i]) != str(golds[i + 1])]
    out: dict[str, Any] = {"suite": suite.name, "problems": count,
                           "boxed_gold": rate([_boxed(g) for g in golds], golds),
                           "shifted_pairs": len(pairs),
                           "shifted_gold": rate([_boxed(golds[i + 1]) for i in pairs], [golds[i] for i in pairs]),
                           "solution": None, "shifted_solution": None, "solution_failures": []}
    if has_sol:
        own = verdicts(sols, golds)
        out["solution"] = sum(v for _, v in own) / count
        out["shifted_solution"] = rate([sols[i + 1] for i in pairs], [golds[i] for i in pairs])
        out["solution_failures"] = [{"index": p["index"], "id": p["id"], "gold": p["gold"], "extracted": a}
                                    for p, (a, v) in zip(problems, own, strict=True) if not v]
    out["score_failures"] = failures
    return out


__all__ = [
    "HELDOUT_METRICS",
    "HELDOUT_SUMS",
    "heldout_metrics",
    "reward_suite_data",
    "reward_suite_rows",
    "run_reward_suite",
    "run_task",
    "score_samples",
    "task_rows",
    "task_scorer",
    "self_consistency",
    "TEMPLATES",
    "EvalProtocol",
    "evaluate",
    "evaluate_suites",
    "flat_metrics",
    "heldout_scorer",
    "render",
    "run_suite",
    "same_answer",
    "score_answers",
    "score_completions",
    "score_text",
    "suite_scorer",
    "summarize",
    "vote_pairs",
    "vote_table",
]
