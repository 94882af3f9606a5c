"""A held-out split of a dataset of one's own: rows chosen by a hash of their prompt, so the same
prompts are held out whatever the file's order, and a prompt that appears twice is on one side."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any


def prompt_key(prompt: Any) -> str:
    """A stable hash of a prompt (text, or a list of chat messages)."""
    text = prompt if isinstance(prompt, str) else json.dumps(prompt, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def holdout_split(prompts: Sequence[Any], n: int) -> tuple[list[int], list[int]]:
    """(training row indices, held-out row indices), each in the dataset's order.

    The held-out rows are those whose prompt hash is among the ``n`` smallest; every copy of a
    held-out prompt is held out too (so slightly more than ``n`` where prompts repeat), and no
    training row shares a prompt with a held-out one. ``n`` >= the number of distinct prompts is
    refused: nothing would be left to train on.
    """
    keys = [prompt_key(p) for p in prompts]
    distinct = sorted(set(keys))
    if n >= len(distinct):
        raise ValueError(f"config key 'eval_holdout_size': {n} held-out prompts leave none of the dataset's "
                         f"{len(distinct)} distinct prompts to train on")
    if n <= 0:
        return list(range(len(keys))), []
    held = set(distinct[:n])
    train = [i for i, k in enumerate(keys) if k not in held]
    heldout = [i for i, k in enumerate(keys) if k in held]
    return train, heldout
