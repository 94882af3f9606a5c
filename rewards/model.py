"""Reward models as reward functions, as TRL runs them: a sequence-classification model scores
prompt + completion, and its first logit is the reward.

    reward_funcs=[my_reward, "path/to/reward_model", AutoModelForSequenceClassification.from_pretrained(...)]

:class:`RewardModel` wraps one with its own tokenizer and follows the reward contract
(``fn(prompts=..., completions=..., **columns) -> list[float]``), so the runner, the weights and
the metrics (``rewards/<name>/mean``, the name being the last part of the model's path, as TRL)
treat it as any reward. What TRL's ``_calculate_rewards`` does, step for step: a conversational
prompt and its completion are rendered as one conversation with the reward tokenizer's chat
template (no generation prompt), a standard one is the prompt string plus the completion
string; the texts are tokenized together (right padding, no added special tokens) and scored in
one batched forward pass under ``torch.inference_mode`` on the model's device; ``logits[:, 0]``
is the reward. The tokenizer's pad token defaults to its eos token and the model's config
learns that pad id (a sequence-classification head scores the last non-pad token).

It runs in the trainer's process (``rlreason_in_process``): the reward worker pool cannot pickle a
model, and a GPU model could not be used in a forked worker anyway (rewards/runner.py).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

# A reward with this attribute set is called in the trainer's process, never in the pool.
IN_PROCESS_ATTRIBUTE = "rlreason_in_process"


class RewardModelError(ValueError):
    """A reward model that cannot be loaded or run; the message names its entry."""


def is_model_spec(spec: Any) -> bool:
    """Whether a ``reward_funcs`` string names a reward model rather than a reward function: a
    local model folder (it holds a config.json), or a hub id ``org/name`` (no ``:``, not a file)."""
    if not isinstance(spec, str) or ":" in spec:
        return False
    path = Path(spec).expanduser()
    if path.is_dir():
        return (path / "config.json").is_file()
    return spec.count("/") == 1 and not spec.startswith((".", "/", "~")) and not path.suffix


def is_reward_model(obj: Any) -> bool:
    """Whether ``obj`` is a model object given as a reward (a torch module with a config)."""
    return isinstance(obj, torch.nn.Module) and hasattr(obj, "config")


def model_name(model: torch.nn.Module) -> str:
    """The name TRL logs a reward model under: the last part of its path or hub id."""
    path = getattr(model.config, "_name_or_path", "") or ""
    return path.rstrip("/").split("/")[-1] or type(model).__name__


class RewardModel:
    """A sequence-classification model as a reward function (see the module docstring)."""

    rlreason_in_process = True  # IN_PROCESS_ATTRIBUTE: never sent to the reward worker pool

    def __init__(self, model: torch.nn.Module, tokenizer: Any, label: str) -> None:
        labels = getattr(model.config, "num_labels", None)
        head = type(model).__name__.endswith("ForSequenceClassification") or hasattr(model, "score")
        if not isinstance(labels, int) or labels < 1 or not head:
            raise RewardModelError(f"{label}: {type(model).__name__} is not a sequence-classification model (it "
                                   f"needs a classification head, e.g. AutoModelForSequenceClassification with "
                                   f"num_labels=1); its first logit is the reward")
        if tokenizer is None:
            raise RewardModelError(f"{label}: no tokenizer; pass reward_processing_classes, or save one in the "
                                   f"model's folder")
        if tokenizer.pad_token_id is None:  # as TRL
            tokenizer.pad_token = tokenizer.eos_token
        if tokenizer.pad_token_id is None:
            raise RewardModelError(f"{label}: its tokenizer has neither a pad token nor an eos token")
        model.config.pad_token_id = tokenizer.pad_token_id  # the head reads the last non-pad token
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.__name__ = model_name(model)
        self.label = label

    def to(self, device: torch.device | str) -> RewardModel:
        self.model.to(device)
        return self

    def texts(self, prompts: list, completions: list) -> list[str]:
        """What the model reads: prompt + completion, one conversation through the reward tokenizer's
        chat template when the prompt is a message list, else the two strings joined."""
        if prompts and isinstance(prompts[0], list):
            if not getattr(self.tokenizer, "chat_template", None):
                raise RewardModelError(f"{self.label}: conversational prompts need a chat template in the reward "
                                       f"model's tokenizer")
            return [self.tokenizer.apply_chat_template(p + c, tokenize=False) for p, c in zip(prompts, completions,
                                                                                              strict=True)]
        return [p + c for p, c in zip(prompts, completions, strict=True)]

    def __call__(self, prompts: list, completions: list, **columns: Any) -> list[float]:
        """[N] prompts and completions -> N rewards, ``logits[:, 0]`` of one batched forward pass."""
        inputs = self.tokenizer(text=self.texts(prompts, completions), return_tensors="pt", padding=True,
                                padding_side="right", add_special_tokens=False)
        device = next(self.model.parameters()).device
        with torch.inference_mode():
            logits = self.model(**{k: v.to(device) for k, v in inputs.items()}).logits  # [N, num_labels]
        return logits[:, 0].float().tolist()


def load_reward_model(spec: str | torch.nn.Module, tokenizer: Any = None, label: str = "reward model",
                      trust_remote_code: bool = False) -> RewardModel:
    """A :class:`RewardModel` from a model object or a path / hub id (loaded with
    ``AutoModelForSequenceClassification``, ``num_labels=1`` as TRL), with ``tokenizer`` or the
    one saved with the model; errors name ``label`` (the ``reward_funcs`` entry)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    if isinstance(spec, str):
        try:
            model = AutoModelForSequenceClassification.from_pretrained(spec, num_labels=1,
                                                                       trust_remote_code=trust_remote_code)
        except (OSError, ValueError) as e:
            raise RewardModelError(f"{label}: cannot load a sequence-classification model from {spec!r} (a model "
                                   f"folder or hub id): {e}") from e
    else:
        model = spec
    if tokenizer is None:
        path = spec if isinstance(spec, str) else getattr(model.config, "_name_or_path", "")
        try:
            tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code) if path else None
        except (OSError, ValueError) as e:
            raise RewardModelError(f"{label}: cannot load the reward model's tokenizer from {path!r}: {e}; pass "
                                   f"reward_processing_classes") from e
    return RewardModel(model, tokenizer, label)


def dry_run(reward: RewardModel, prompts: list, completions: list) -> None:
    """Score one prompt and completion at start-up: a model that fails on the run's first row fails
    here, naming its entry, not at step 1."""
    try:
        values = reward(prompts=prompts, completions=completions)
    except RewardModelError:
        raise
    except Exception as e:
        raise RewardModelError(f"{reward.label}: scoring one row failed: {type(e).__name__}: {e}") from e
    if len(values) != len(completions) or not all(math.isfinite(v) for v in values):
        raise RewardModelError(f"{reward.label}: scoring one row gave {values!r}, not one finite number")
