"""Distillation data: a teacher's answers, checked by the reward functions, as a dataset.

Offline (rejection-sampled) distillation, as in DeepSeek-R1's distilled models: the teacher
answers every problem ``k`` times, the reward functions score the answers, a selection rule
keeps verified ones, and the student is fine-tuned on them (``rlreason.loop.sft``). The dataset is
a Hugging Face ``datasets`` folder in the prompt-completion format TRL's SFTTrainer reads
(``prompt``, ``completion``), plus the exact token ids (``prompt_ids``, ``completion_ids``),
the scores, and its provenance (teacher, sampling settings, rewards, selection, counts) in the
dataset's info and in ``provenance.json`` beside it.

On-policy distillation needs no data: the trainer scores the student's own samples with the
teacher (``rlreason.algorithms.teacher_advantages``); what it needs from here is the check that
teacher and student share a tokenizer (``check_same_tokenizer``).
"""

from __future__ import annotations

import datetime
import hashlib
import importlib.metadata
import json
import math
import shutil
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, get_args

import datasets

from rlreason.config import DistillSelection
from rlreason.rewards.runner import reward_inputs
from rlreason.rollout.base import RolloutEngine, SamplingConfig

PROVENANCE_FILE = "provenance.json"


# ---------------------------------------------------------------------------- tokenizers


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of the token -> id map and the special tokens: equal fingerprints, same token ids."""
    blob = json.dumps({"vocab": sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1]),
                       "eos": tokenizer.eos_token_id, "pad": tokenizer.pad_token_id}, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def check_same_tokenizer(student, teacher, student_name: str, teacher_name: str) -> None:
    """Raise, naming both models and the first difference, unless the two tokenizers map every
    token to the same id and agree on eos and pad. On-policy distillation compares the two
    models' log-probs of the same token ids, so anything less makes the signal meaningless."""
    sv, tv = student.get_vocab(), teacher.get_vocab()
    problem = None
    if sv != tv:
        only_s, only_t = sorted(set(sv) - set(tv)), sorted(set(tv) - set(sv))
        moved = sorted((sv[t], t) for t in set(sv) & set(tv) if sv[t] != tv[t])
        if moved:
            i, tok = moved[0]
            problem = f"token {tok!r} is id {i} for the student but {tv[tok]} for the teacher"
        else:
            problem = (f"vocabularies differ ({len(sv)} vs {len(tv)} tokens; e.g. "
                       f"{(only_s or only_t)[0]!r} is only in the {'student' if only_s else 'teacher'}'s)")
    elif student.eos_token_id != teacher.eos_token_id:
        problem = f"eos token ids differ ({student.eos_token_id} vs {teacher.eos_token_id})"
    if problem:
        raise ValueError(f"config key 'teacher_model_name_or_path': the teacher ({teacher_name}) and the student "
                         f"({student_name}) must share a tokenizer for on-policy distillation: {problem}")


# ---------------------------------------------------------------------------- selection


def _passes(r: float | None, min_reward: float) -> bool:
    return r is not None and not math.isnan(r) and r >= min_reward


def select_completions(texts: list[str], rewards: list[float | None], lengths: list[int], selection: DistillSelection,
                       min_reward: float = 1.0, max_per_problem: int | None = None) -> list[int]:
    """Which of one problem's k answers to keep (indices into them, in sample order).

    An answer is verified when its reward is >= ``min_reward`` (None/NaN, i.e. a failed reward,
    never is). Answers whose text is the same up to whitespace count once (the first kept), so
    an easy problem answered identically k times adds one example, not k.

    - ``best_of_k``: the verified answer with the highest reward (ties: the shortest, then the first);
    - ``shortest_correct``: the shortest verified answer (in tokens; ties: the first);
    - ``all_correct``: every distinct verified answer, at most ``max_per_problem``.
    """
    if selection not in get_args(DistillSelection):
        raise ValueError(f"config key 'distill_selection': must be one of {get_args(DistillSelection)}, "
                         f"got {selection!r}")
    if not len(texts) == len(rewards) == len(lengths):
        raise ValueError(f"{len(texts)} texts, {len(rewards)} rewards and {len(lengths)} lengths")
    seen: set[str] = set()
    verified = []
    for i, (text, r) in enumerate(zip(texts, rewards, strict=True)):
        key = " ".join(text.split())
        if _passes(r, min_reward) and key not in seen:
            seen.add(key)
            verified.append(i)
    if not verified:
        return []
    if selection == "best_of_k":
        return [min(verified, key=lambda i: (-rewards[i], lengths[i], i))]
    if selection == "shortest_correct":
        return [min(verified, key=lambda i: (lengths[i], i))]
    return verified[:max_per_problem] if max_per_problem else verified


# ---------------------------------------------------------------------------- sampling


@dataclass
class RejectionStats:
    problems: int = 0
    samples: int = 0
    verified: int = 0  # answers that passed min_reward (before dedup and selection)
    kept: int = 0
    problems_kept: int = 0  # problems with at least one kept answer
    reward_failures: int = 0  # answers a reward function failed on (scored None)

    def add(self, other: RejectionStats) -> None:
        for k, v in asdict(other).items():
            setattr(self, k, getattr(self, k) + v)


def rejection_sample(engine: RolloutEngine, rows: list[dict], k: int, sampling: SamplingConfig,
                     score: Callable[[list, list, dict[str, list]], Any], selection: DistillSelection,
                     min_reward: float, max_per_problem: int | None, prompt_column: str = "prompt",
                     skip_columns: Iterable[str] = (), seeds: list[int] | None = None
                     ) -> tuple[list[dict], RejectionStats]:
    """Sample ``k`` answers to each row's prompt, score them, keep the selected ones.

    ``rows`` as ``rlreason.data.prepare`` makes them (``prompt_ids`` and the source columns);
    ``score(prompts, completions, columns)`` returns an object with ``total`` [N] and
    ``per_func`` (name -> [N], NaN where None), as ``RewardRunner.score`` does; ``seeds``, one
    per row, make each problem's answers independent of the batching. -> (records, stats): a
    record per kept answer with the row's columns, the completion (text, or an assistant message
    for conversational prompts), its token ids, rewards and finish reason, and the problem's
    pass rate over its k answers.
    """
    prompt_ids = [r["prompt_ids"] for r in rows]
    groups = engine.generate(prompt_ids, k, sampling) if seeds is None else \
        engine.generate(prompt_ids, k, sampling, seeds=seeds)
    samples = [s for g in groups for s in g]
    prompts, completions, columns = reward_inputs(rows, [s.text for s in samples], [s.token_ids for s in samples], k,
                                                  prompt_column, skip=("prompt_ids", *skip_columns))
    out = score(prompts, completions, columns)
    conversational = bool(rows) and isinstance(rows[0][prompt_column], list)
    # no applicable reward term: no verdict (NaN, never passes), not a total of 0
    total = [t if ok else math.nan for t, ok in zip(out.total.tolist(), out.applicable.tolist(), strict=True)]
    per_func = {name: v.tolist() for name, v in out.per_func.items()}
    stats = RejectionStats(problems=len(rows), samples=len(samples))
    stats.reward_failures = sum(1 for vals in per_func.values() for v in vals if math.isnan(v))
    records = []
    for p, row in enumerate(rows):
        idx = range(p * k, (p + 1) * k)
        rewards = [None if math.isnan(total[i]) else total[i] for i in idx]
        n_ok = sum(_passes(r, min_reward) for r in rewards)
        stats.verified += n_ok
        keep = select_completions([samples[i].text for i in idx], rewards, [len(samples[i].token_ids) for i in idx],
                                  selection, min_reward, max_per_problem)
        stats.kept += len(keep)
        stats.problems_kept += bool(keep)
        for j in keep:
            i = p * k + j
            records.append({**{c: v for c, v in row.items() if c not in skip_columns},
                            # an assistant message for a conversational dataset, else the text (the
                            # rewards may have seen a message: the prompt went through a chat template)
                            "completion": completions[i] if conversational else samples[i].text,
                            "completion_ids": list(samples[i].token_ids),
                            "reward": total[i], **{f"reward_{n}": per_func[n][i] for n in per_func},
                            "finish_reason": samples[i].finish_reason, "sample_index": j, "pass_rate": n_ok / k})
    return records, stats


# ---------------------------------------------------------------------------- dataset


def build_dataset(records: list[dict], provenance: dict[str, Any]) -> datasets.Dataset:
    """The kept answers as a ``datasets.Dataset`` whose info carries ``provenance`` (JSON)."""
    if not records:
        raise ValueError("no teacher answer passed the reward check (distill_min_reward): nothing to train on; "
                         "check the teacher, the reward functions, or lower distill_min_reward")
    info = datasets.DatasetInfo(description=json.dumps(provenance, sort_keys=True))
    return datasets.Dataset.from_list(records, info=info)


def save_dataset(ds: datasets.Dataset, path: str | Path) -> Path:
    """``save_to_disk`` plus a readable ``provenance.json``; written to a temporary folder that
    is renamed into place, so an interrupted save never leaves a dataset that looks complete."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    ds.save_to_disk(str(tmp))
    (tmp / PROVENANCE_FILE).write_text(json.dumps(provenance_of(ds), indent=2, sort_keys=True))
    if path.exists():
        shutil.rmtree(path)
    tmp.rename(path)
    return path


def provenance_of(ds: datasets.Dataset) -> dict[str, Any]:
    try:
        return json.loads(ds.info.description or "{}")
    except json.JSONDecodeError:
        return {}


def load_dataset(path: str | Path) -> tuple[datasets.Dataset, dict[str, Any]]:
    """A dataset saved by ``save_dataset`` and its provenance."""
    path = Path(path)
    if not (path / "dataset_info.json").exists():
        raise FileNotFoundError(f"config key 'distill_dataset_path': no saved dataset at {path}")
    ds = datasets.load_from_disk(str(path))
    return ds, provenance_of(ds)


def dataset_settings(teacher: str, teacher_tokenizer, sampling: SamplingConfig, k: int, reward_names: list[str],
                     reward_weights: list[float] | None, selection: str, min_reward: float,
                     max_per_problem: int | None, source: dict[str, Any], seed: int) -> dict[str, Any]:
    """What decides a distillation dataset's content: a saved dataset is reused only by a run
    whose settings are equal. JSON-normalised (tuples become lists), as it reads back from disk."""
    settings = {"teacher": teacher, "tokenizer": tokenizer_fingerprint(teacher_tokenizer),
                "sampling": asdict(sampling), "samples_per_problem": k,
                "rewards": {"names": reward_names, "weights": reward_weights},
                "selection": {"rule": selection, "min_reward": min_reward, "max_per_problem": max_per_problem,
                              "dedup": "same text up to whitespace"},
                "source": source, "seed": seed}
    return json.loads(json.dumps(settings))


def make_provenance(settings: dict[str, Any], stats: RejectionStats, sampling_seconds: float) -> dict[str, Any]:
    """Everything needed to know where a distillation dataset came from and to redo it."""
    return {"settings": settings, "counts": asdict(stats), "sampling_seconds": round(sampling_seconds, 1),
            "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "rlreason_version": _version()}


def _version() -> str:
    try:
        return importlib.metadata.version("rlreason")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
