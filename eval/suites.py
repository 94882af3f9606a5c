"""Benchmark suites. For now the embedded arithmetic suite; the standard math suites
(gsm8k, math500, aime, amc, minerva, olympiadbench) come with the evaluation issue."""

from __future__ import annotations

from rlreason.tasks import arith

# Fixed so that every run, before and after training, is scored on the same problems.
ARITH_EVAL_SEED = 12345


def arith_suite(n: int, difficulty: arith.Difficulty | None = None, seed: int = ARITH_EVAL_SEED) -> list[dict]:
    """``n`` held-out arithmetic problems as rows ``{"prompt", "answer"}``.

    Held-out problems are never generated for training (the split is a hash of the
    expression), so this measures generalisation, not recall.
    """
    problems = arith.generate(n, seed=seed, split="heldout", difficulty=difficulty or arith.Difficulty())
    return arith.to_records(problems)
