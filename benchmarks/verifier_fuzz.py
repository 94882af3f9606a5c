"""Differential fuzz of the math verifier against sympy ground truth, with math-verify alongside.

The generator is ``tests/_expr_gen.py`` (the same one the suite's ``tests/test_verifier_fuzz.py``
uses): random expression trees rendered to LaTeX and plain text in several equal ways, plus
near-miss mutants built as trees (braces dropped, digits moved across a brace, signs flipped,
``*``/``/`` swapped, exponents changed, tiny perturbations, case changes); the label comes from
sympy on the trees (exact, or 60/300-digit evaluation at random rational points), never from
either verifier.

Printed as markdown tables: pairs by class, false positives (count and examples), the
false-negative rate on equal pairs by class and by rendering, ``verify`` latency (p50, p99,
max), and math-verify's results on the same pairs (``verify(parse("\\boxed{gold}"),
parse("\\boxed{pred}"))``).

Usage::

    python benchmarks/verifier_fuzz.py --pairs 100000 --seed 0
    python benchmarks/verifier_fuzz.py --pairs 10000 --math-verify-every 10   # math-verify on 1 in 10
    python benchmarks/verifier_fuzz.py --pairs 10000 --no-math-verify

math-verify is about 10-50x slower than the verifier, so on 100,000 pairs ``--math-verify-every``
keeps the run short; the sampled pairs are the same for a given seed.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from _expr_gen import Stats, boxed_completion, generate_batch  # noqa: E402

try:
    from rlreason.rewards.math import AccuracyReward, verify
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from rewards.math import AccuracyReward, verify  # type: ignore[no-redef]


def _pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def _ms(x: float) -> str:
    return f"{1000 * x:.2f}"


def _md(s: str, width: int = 90) -> str:
    s = s if len(s) <= width else s[: width - 1] + "…"
    return "`" + s.replace("|", "\\|").replace("`", "'") + "`"


class MathVerify:
    """math-verify on (gold, pred), both wrapped in ``\\boxed{}``; gold parses cached."""

    def __init__(self) -> None:
        from math_verify import parse
        from math_verify import verify as mv_verify

        self.parse, self.mv_verify = parse, mv_verify
        self.gold_cache: dict[str, object] = {}

    def __call__(self, gold: str, pred: str) -> bool | str:
        try:
            g = self.gold_cache.get(gold)
            if g is None:
                g = self.gold_cache[gold] = self.parse("\\boxed{" + gold + "}")
            return bool(self.mv_verify(g, self.parse("\\boxed{" + pred + "}")))
        except Exception as e:  # noqa: BLE001 - math-verify's own failures count as "no"
            return f"raised {type(e).__name__}"


def run(n_pairs: int, seed: int, mv_every: int, examples: int) -> None:
    rng = random.Random(seed)
    stats = Stats()
    reward = AccuracyReward()
    mv = MathVerify() if mv_every > 0 else None

    total = Counter()  # (klass, equal)
    by_render = Counter()  # (render, equal)
    fp: dict[str, list] = defaultdict(list)
    fn: dict[str, list] = defaultdict(list)
    fn_render = Counter()
    boxed = Counter()  # outcomes of the \boxed{} completion path
    boxed_fp: list = []
    boxed_fn: list = []
    raised: list = []
    lat: list[float] = []
    slowest: list[tuple[float, str, str]] = []
    mv_total = Counter()
    mv_fp: dict[str, list] = defaultdict(list)
    mv_fn: dict[str, list] = defaultdict(list)
    mv_lat: list[float] = []
    disagree = Counter()  # (klass, ours, theirs) on sampled pairs

    t_gen = 0.0
    t_start = time.perf_counter()
    n = 0
    while n < n_pairs:
        t0 = time.perf_counter()
        batch = generate_batch(rng, stats=stats)
        t_gen += time.perf_counter() - t0
        for p in batch:
            if n >= n_pairs:
                break
            n += 1
            total[(p.klass, p.equal)] += 1
            by_render[(p.render, p.equal)] += 1
            t0 = time.perf_counter()
            try:
                got = verify(p.gold, p.candidate)
            except Exception as e:  # noqa: BLE001
                got = f"raised {type(e).__name__}: {e}"
                raised.append((p, got))
            dt = time.perf_counter() - t0
            lat.append(dt)
            if len(slowest) < 5 or dt > slowest[-1][0]:
                slowest = sorted([*slowest, (dt, p.gold, p.candidate)], reverse=True)[:5]
            if not p.equal and got is True:
                fp[p.klass].append(p)
            if p.equal and got is not True:
                fn[p.klass].append((p, got))
                fn_render[p.render] += 1
            if p.boxed:
                score = reward.score(boxed_completion(p.candidate, rng), p.gold)
                boxed[(p.equal, score)] += 1
                if not p.equal and score == 1.0:
                    boxed_fp.append(p)
                if p.equal and score != 1.0 and got is True:
                    boxed_fn.append((p, score))
            if mv is not None and n % mv_every == 0:
                t0 = time.perf_counter()
                theirs = mv(p.gold, p.candidate)
                mv_lat.append(time.perf_counter() - t0)
                mv_total[(p.klass, p.equal)] += 1
                if not p.equal and theirs is True:
                    mv_fp[p.klass].append(p)
                if p.equal and theirs is not True:
                    mv_fn[p.klass].append((p, theirs))
                if (got is True) != (theirs is True):
                    disagree[(p.klass, got is True, theirs is True)] += 1
    wall = time.perf_counter() - t_start

    classes = sorted({k for k, _ in total})
    n_eq = sum(v for (k, e), v in total.items() if e)
    n_ne = n - n_eq
    print(f"# Verifier fuzz: {n} pairs, seed {seed}\n")
    print(
        f"{n_eq} equal pairs, {n_ne} unequal; generation {t_gen:.1f} s, total {wall:.1f} s; "
        f"skipped golds {stats.skipped_gold}, pairs sympy could not decide in time {stats.skipped_pairs}, "
        f"candidates identical to the gold dropped {stats.dropped_same}; "
        f"{sum(boxed.values())} pairs also scored as a \\boxed{{}} completion.\n"
    )

    print("## By class (rlreason verifier)\n")
    print("| class | equal pairs | unequal pairs | false negatives | FN rate | false positives |")
    print("|---|---:|---:|---:|---:|---:|")
    for k in classes:
        ne, nu = total[(k, True)], total[(k, False)]
        nfn, nfp = len(fn[k]), len(fp[k])
        rate = f"{nfn / ne:.2%}" if ne else "-"
        print(f"| {k} | {ne} | {nu} | {nfn} | {rate} | {nfp} |")
    all_fn = sum(len(v) for v in fn.values())
    all_fp = sum(len(v) for v in fp.values())
    print(f"| **all** | {n_eq} | {n_ne} | {all_fn} | {all_fn / max(1, n_eq):.2%} | {all_fp} |\n")

    print("## Equal pairs by rendering of the candidate\n")
    print("| rendering | equal pairs | false negatives | FN rate |")
    print("|---|---:|---:|---:|")
    for r in sorted({r for r, _ in by_render}):
        ne = by_render[(r, True)]
        if ne:
            print(f"| {r} | {ne} | {fn_render[r]} | {fn_render[r] / ne:.2%} |")
    print()

    print("## Latency of `verify` (ms)\n")
    print("| p50 | p99 | max | mean |")
    print("|---:|---:|---:|---:|")
    print(f"| {_ms(_pct(lat, 0.5))} | {_ms(_pct(lat, 0.99))} | {_ms(max(lat))} | {_ms(statistics.fmean(lat))} |\n")
    print("Slowest: " + "; ".join(f"{_ms(t)} ms {_md(g, 40)} vs {_md(c, 40)}" for t, g, c in slowest) + "\n")

    print("## \\boxed{} completion path (AccuracyReward().score)\n")
    print("| truly equal | score 1.0 | score 0.0 | None |")
    print("|---|---:|---:|---:|")
    for e in (True, False):
        print(f"| {e} | {boxed[(e, 1.0)]} | {boxed[(e, 0.0)]} | {boxed[(e, None)]} |")
    print(
        f"\nFalse positives through the completion path: {len(boxed_fp)}; "
        f"equal pairs that `verify` accepts but the completion path does not: {len(boxed_fn)}\n"
    )
    for p in boxed_fp[:examples]:
        print(f"- FP boxed [{p.klass}] {_md(p.gold)} vs {_md(p.candidate)}")
    for p, s in boxed_fn[:examples]:
        print(f"- FN boxed [{p.klass}] {_md(p.gold)} vs {_md(p.candidate)} -> {s}")
    if raised:
        print(f"\n**verify raised on {len(raised)} pairs**, e.g.:\n")
        for p, e in raised[:examples]:
            print(f"- {_md(p.gold)} vs {_md(p.candidate)}: {e}")
    print()

    print("## False positives (rlreason verifier)\n")
    if not all_fp:
        print("None.\n")
    for k in classes:
        for p in fp[k][:examples]:
            print(f"- [{k}/{p.render}] gold {_md(p.gold)} scored equal to {_md(p.candidate)}")
    print("\n## False negatives (rlreason verifier), examples by class\n")
    for k in classes:
        for p, got in fn[k][:examples]:
            print(f"- [{k}/{p.render}] gold {_md(p.gold)} vs {_md(p.candidate)} -> {got}")
    print()

    if mv is None:
        return
    m = sum(mv_total.values())
    m_eq = sum(v for (k, e), v in mv_total.items() if e)
    print(f"## math-verify on the same pairs (1 in {mv_every}: {m} pairs)\n")
    print("| class | equal pairs | math-verify FN | FN rate | unequal pairs | math-verify FP |")
    print("|---|---:|---:|---:|---:|---:|")
    for k in classes:
        ne, nu = mv_total[(k, True)], mv_total[(k, False)]
        if ne or nu:
            rate = f"{len(mv_fn[k]) / ne:.2%}" if ne else "-"
            print(f"| {k} | {ne} | {len(mv_fn[k])} | {rate} | {nu} | {len(mv_fp[k])} |")
    mfn = sum(len(v) for v in mv_fn.values())
    mfp = sum(len(v) for v in mv_fp.values())
    print(f"| **all** | {m_eq} | {mfn} | {mfn / max(1, m_eq):.2%} | {m - m_eq} | {mfp} |\n")
    print("| math-verify latency p50 (ms) | p99 | max |")
    print("|---:|---:|---:|")
    print(f"| {_ms(_pct(mv_lat, 0.5))} | {_ms(_pct(mv_lat, 0.99))} | {_ms(max(mv_lat) if mv_lat else 0)} |\n")
    print("Disagreements on the sampled pairs (class, rlreason says equal, math-verify says equal): count\n")
    print("| class | rlreason | math-verify | pairs |")
    print("|---|---|---|---:|")
    for (k, ours, theirs), c in sorted(disagree.items(), key=lambda kv: -kv[1]):
        print(f"| {k} | {ours} | {theirs} | {c} |")
    print("\n### math-verify false positives\n")
    for k in classes:
        for p in mv_fp[k][:examples]:
            print(f"- [{k}/{p.render}] gold {_md(p.gold)} scored equal to {_md(p.candidate)}")
    print("\n### math-verify false negatives, examples by class\n")
    for k in classes:
        for p, got in mv_fn[k][:examples]:
            print(f"- [{k}/{p.render}] gold {_md(p.gold)} vs {_md(p.candidate)} -> {got}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pairs", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--math-verify-every",
        type=int,
        default=1,
        metavar="K",
        help="run math-verify on every K-th pair (default 1: all)",
    )
    ap.add_argument("--no-math-verify", action="store_true")
    ap.add_argument("--examples", type=int, default=5, help="examples listed per class")
    args = ap.parse_args()
    run(args.pairs, args.seed, 0 if args.no_math_verify else args.math_verify_every, args.examples)


if __name__ == "__main__":
    main()
