"""TRL 1.16's GRPO documentation, run on rlreason with only the import and the model id changed.

The reward functions are TRL's documented examples (the GRPO trainer page: ``reward_len``,
``reward_num_unique_chars``, the conversational and standard format rewards, a reward reading an
extra column, a reward model) and the notebook code is what a TRL user writes:
``from rlreason import GRPOConfig, GRPOTrainer`` instead of ``from trl import ...``, ``"tiny"``
(the embedded model) for the hub id. Each test records what the rewards received and checks it
is what TRL passes (strings for standard prompts, message lists for conversational ones, the
extra columns), that a varying reward moves the weights, and that ``train()`` writes the run.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import datasets
import pytest
import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    TrainerCallback,
)

from rlreason import GRPOConfig, GRPOTrainer
from rlreason.config import ConfigError
from rlreason.rewards import RewardSpecError
from rlreason.rewards.health import RewardFailureError

PROMPTS = ["The sky is", "Once upon a time", "The capital of France is", "Two plus two is"]


def small(tmp_path: Path, **overrides) -> GRPOConfig:
    """A TRL user's GRPOConfig, small: every value the test depends on given explicitly."""
    values = dict(output_dir=str(tmp_path / "out"), per_device_train_batch_size=8, gradient_accumulation_steps=1,
                  num_generations=4, max_completion_length=16, max_steps=2, learning_rate=1e-5, seed=0,
                  loss_type="grpo", scale_rewards="group", epsilon=0.2, epsilon_high=0.2, beta=0.0,
                  report_to="none", use_cpu=True, bf16=False, logging_steps=1, save_steps=0, eval_steps=0,
                  final_eval_size=0, log_completions_steps=0, reward_num_workers=0, progress=False,
                  max_prompt_length=64)
    return GRPOConfig(**{**values, **overrides})


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


class Seen:
    """A reward's calls: the arguments it got, one dict per call."""

    def __init__(self) -> None:
        self.calls: list[dict] = []

    def record(self, **kwargs) -> None:
        self.calls.append(kwargs)


class Events(TrainerCallback):
    def __init__(self) -> None:
        self.events: list[tuple[str, int]] = []
        self.logs: list[dict] = []

    def on_train_begin(self, args, state, control, **kwargs):
        self.events.append(("train_begin", state.global_step))

    def on_step_end(self, args, state, control, **kwargs):
        self.events.append(("step_end", state.global_step))

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append(dict(logs))

    def on_save(self, args, state, control, **kwargs):
        self.events.append(("save", state.global_step))

    def on_train_end(self, args, state, control, **kwargs):
        self.events.append(("train_end", state.global_step))


def test_quickstart_standard_format_reward_len(tiny_path, tmp_path):
    """TRL's quickstart: string prompts (standard format), ``reward_len`` passed alone (not in a
    list). Rewards get strings; the rewards vary, so the gradient is not zero; train() writes the
    final model and returns TRL's TrainOutput; callbacks see the steps."""
    seen = Seen()

    def reward_len(completions, **kwargs):  # TRL docs: "reward completions that are close to 20 characters"
        seen.record(completions=completions, **kwargs)
        return [-abs(20 - len(completion)) for completion in completions]

    dataset = datasets.Dataset.from_dict({"prompt": PROMPTS})
    events = Events()
    trainer = GRPOTrainer(model="tiny", reward_funcs=reward_len, args=small(tmp_path), train_dataset=dataset,
                          callbacks=[events])
    result = trainer.train()

    assert len(seen.calls) == 2  # one call per step, the whole batch
    call = seen.calls[0]
    assert len(call["completions"]) == 8 and all(isinstance(c, str) for c in call["completions"])
    assert all(isinstance(p, str) and p in PROMPTS for p in call["prompts"])  # the plain prompt, no chat template
    assert call["prompts"][0:4] == [call["prompts"][0]] * 4  # a prompt's group of num_generations is adjacent
    assert "trainer_state" in call and "completion_ids" in call
    rows = metrics(tmp_path / "out")
    assert rows[0]["rewards/reward_len/std"] > 0 and rows[0]["grad_norm"] > 0  # varying rewards: a real update
    assert result.global_step == 2 and math.isfinite(result.training_loss)
    assert result.metrics["steps"] == 2
    out = tmp_path / "out"
    assert (out / "final_model" / "config.json").is_file() and (out / "summary.json").is_file()
    assert (out / "report.html").is_file()
    # the final model moved away from the initial one
    before = AutoModelForCausalLM.from_pretrained(tiny_path).state_dict()
    after = AutoModelForCausalLM.from_pretrained(out / "final_model").state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert events.events[0] == ("train_begin", 0) and events.events[-1] == ("train_end", 2)
    assert [e for e in events.events if e[0] == "step_end"] == [("step_end", 1), ("step_end", 2)]
    assert ("save", 2) in events.events
    assert [log["reward/mean"] for log in events.logs] == [r["reward/mean"] for r in rows]
    trainer.save_model(str(tmp_path / "saved"))
    assert (tmp_path / "saved" / "config.json").is_file()


def test_num_unique_chars_from_an_iterable_dataset(tmp_path):
    """TRL docs' ``reward_num_unique_chars`` (``set(completion)``: it needs strings, the chat form
    raised ``unhashable type: 'dict'``), on an IterableDataset, in a reward worker process, for
    TRL's default length of a run (max_steps -1: num_train_epochs over the prompts)."""

    def reward_num_unique_chars(completions, **kwargs):
        return [len(set(c)) for c in completions]

    dataset = datasets.IterableDataset.from_generator(lambda: iter({"prompt": p} for p in PROMPTS))
    # max_steps -1 (TRL's default): one pass over the 4 prompts, 2 prompts (8 completions) a step
    trainer = GRPOTrainer(model="tiny", reward_funcs=[reward_num_unique_chars], train_dataset=dataset,
                          args=small(tmp_path, reward_num_workers=1, max_steps=-1, num_train_epochs=1.0))
    assert trainer.state.max_steps == 2
    assert trainer.train().global_step == 2
    rows = metrics(tmp_path / "out")
    assert [r["rewards/reward_num_unique_chars/failures"] for r in rows] == [0.0, 0.0]
    assert all(r["rewards/reward_num_unique_chars/mean"] >= 1 for r in rows)  # characters counted, not dicts


def format_reward(completions, **kwargs):
    """TRL docs: "Reward function that checks if the completion has a specific format." (conversational)"""
    pattern = r"^<think>.*?</think><answer>.*?</answer>$"
    completion_contents = [completion[0]["content"] for completion in completions]
    matches = [re.match(pattern, content) for content in completion_contents]
    return [1.0 if match else 0.0 for match in matches]


def test_conversational_format_reward_with_a_model_object(tiny_path, tmp_path):
    """Conversational prompts (lists of messages): the chat template, and rewards get the message
    lists and ``[{"role": "assistant", "content": ...}]`` completions. The model is an object and
    the tokenizer TRL's ``processing_class``."""
    seen = Seen()

    def recording(prompts, completions, **kwargs):
        seen.record(prompts=prompts, completions=completions)
        return format_reward(completions)

    messages = [[{"role": "user", "content": p}] for p in PROMPTS]
    dataset = datasets.Dataset.from_dict({"prompt": messages})
    model = AutoModelForCausalLM.from_pretrained(tiny_path)
    tokenizer = AutoTokenizer.from_pretrained(tiny_path)
    trainer = GRPOTrainer(model=model, reward_funcs=[format_reward, recording], args=small(tmp_path),
                          train_dataset=dataset, processing_class=tokenizer)
    assert trainer.train_dataset[0]["prompt_text"].startswith("<|im_start|>user")  # rendered by the chat template
    trainer.train()
    call = seen.calls[0]
    assert all(p in messages for p in call["prompts"])
    for c in call["completions"]:
        assert isinstance(c, list) and len(c) == 1 and c[0]["role"] == "assistant"
        assert isinstance(c[0]["content"], str)
    rows = metrics(tmp_path / "out")
    assert "rewards/format_reward/mean" in rows[0] and rows[0]["rewards/format_reward/failures"] == 0


def test_standard_format_reward_and_a_system_prompt(tmp_path):
    """The standard-format version of TRL's format reward gets strings; a system_prompt (open-r1's)
    makes the string prompts conversational, explicitly: then the same reward would get lists."""
    seen = Seen()

    def format_reward_standard(completions, **kwargs):
        seen.record(completions=completions)
        pattern = r"^<think>.*?</think><answer>.*?</answer>$"
        return [1.0 if re.match(pattern, content) else 0.0 for content in completions]

    dataset = datasets.Dataset.from_dict({"prompt": PROMPTS})
    GRPOTrainer(model="tiny", reward_funcs=format_reward_standard, args=small(tmp_path / "a", max_steps=1),
                train_dataset=dataset).train()
    assert all(isinstance(c, str) for c in seen.calls[0]["completions"])

    seen.calls.clear()

    def chat_reward(prompts, completions, **kwargs):
        seen.record(prompts=prompts, completions=completions)
        return [float(len(c[0]["content"])) for c in completions]

    GRPOTrainer(model="tiny", reward_funcs=chat_reward, train_dataset=dataset,
                args=small(tmp_path / "b", max_steps=1, system_prompt="Think first.")).train()
    prompt = seen.calls[0]["prompts"][0]
    assert prompt[0] == {"role": "system", "content": "Think first."} and prompt[1]["role"] == "user"
    assert seen.calls[0]["completions"][0][0]["role"] == "assistant"


def test_extra_column_ground_truth(tmp_path):
    """TRL docs: a reward reading an extra dataset column (``ground_truth``) gets it as a list, one
    entry per completion, the row's value repeated over its group; no ``answer`` column needed."""
    seen = Seen()

    def reward_func(completions, ground_truth, **kwargs):
        seen.record(completions=completions, ground_truth=ground_truth, **kwargs)
        matches = [re.search(r"\d", c) for c in completions]
        return [1.0 if m and m.group(0) == gt else 0.0 for m, gt in zip(matches, ground_truth, strict=True)]

    gts = ["5", "7", "2", "4"]
    dataset = datasets.Dataset.from_dict({"prompt": PROMPTS, "ground_truth": gts, "level": [1, 2, 3, 4]})
    GRPOTrainer(model="tiny", reward_funcs=reward_func, args=small(tmp_path, max_steps=1),
                train_dataset=dataset).train()
    call = seen.calls[0]
    by_prompt = dict(zip(PROMPTS, gts, strict=True))
    assert len(call["ground_truth"]) == 8
    assert call["ground_truth"] == [by_prompt[p] for p in call["prompts"]]
    assert call["level"] == [PROMPTS.index(p) + 1 for p in call["prompts"]]  # every other column too


def test_eval_dataset_is_the_held_out_set(tmp_path):
    """TRL's eval_dataset: its rows are evaluated (greedy) before and after training, scored by the
    first reward (correct when it gives >= 1), as a dataset of one's own with eval_holdout_size."""

    def has_digit(completions, **kwargs):
        return [1.0 if re.search(r"\d", c) else 0.0 for c in completions]

    train = datasets.Dataset.from_dict({"prompt": PROMPTS})
    held = datasets.Dataset.from_dict({"prompt": ["1+1=", "2+3=", "The year is"]})
    GRPOTrainer(model="tiny", reward_funcs=has_digit, args=small(tmp_path, max_steps=1), train_dataset=train,
                eval_dataset={"held": held}).train()
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["heldout_n"] == 3 and 0 <= summary["heldout_before"] <= 1 and "heldout_after" in summary
    with pytest.raises(NotImplementedError, match="one held-out set"):
        GRPOTrainer(model="tiny", reward_funcs=has_digit, args=small(tmp_path / "b"), train_dataset=train,
                    eval_dataset={"a": held, "b": held})


def _reward_model(tiny_path: Path, folder: Path) -> Path:
    """A tiny sequence-classification reward model (random head, the tiny model's tokenizer), saved."""
    config = AutoConfig.from_pretrained(tiny_path, num_labels=1)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(config)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_path).save_pretrained(folder)
    return folder


def _scores_one_by_one(folder: Path, texts: list[str]) -> list[float]:
    """The reward model's first logit for each text alone (no padding at all)."""
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    with torch.no_grad():
        return [model(**tok(t, return_tensors="pt", add_special_tokens=False)).logits[0, 0].item() for t in texts]


def test_reward_model_by_path(tiny_path, tmp_path):
    """TRL docs: a reward model passed by name/path. It scores prompt + completion (standard
    format: the two strings joined), batched; logged under its folder's name; the batch mean
    equals the model's scores of each text alone (right padding reads the last real token)."""
    folder = _reward_model(tiny_path, tmp_path / "my-rm")
    seen = Seen()

    def recorder(prompts, completions, **kwargs):
        seen.record(prompts=prompts, completions=completions)
        return [0.0] * len(completions)

    dataset = datasets.Dataset.from_dict({"prompt": PROMPTS})
    GRPOTrainer(model="tiny", reward_funcs=[str(folder), recorder], args=small(tmp_path, max_steps=1),
                train_dataset=dataset).train()
    row = metrics(tmp_path / "out")[0]
    call = seen.calls[0]
    expected = _scores_one_by_one(folder, [p + c for p, c in zip(call["prompts"], call["completions"], strict=True)])
    assert row["rewards/my-rm/failures"] == 0
    assert row["rewards/my-rm/mean"] == pytest.approx(sum(expected) / len(expected), rel=1e-4, abs=1e-5)
    assert row["rewards/my-rm/std"] > 0  # different texts, different scores


def test_reward_model_object_conversational_matches_trl_rendering(tiny_path, tmp_path):
    """A reward model object with its tokenizer in ``reward_processing_classes``, conversational
    prompts: each prompt + completion is rendered by TRL's own ``apply_chat_template`` (what TRL's
    ``_calculate_rewards`` does) and scored alone; the run's batch mean is the same."""
    from trl.data_utils import apply_chat_template

    folder = _reward_model(tiny_path, tmp_path / "rm-obj")
    rm = AutoModelForSequenceClassification.from_pretrained(folder)
    rm_tok = AutoTokenizer.from_pretrained(folder)
    seen = Seen()

    def recorder(prompts, completions, **kwargs):
        seen.record(prompts=prompts, completions=completions)
        return [0.0] * len(completions)

    dataset = datasets.Dataset.from_dict({"prompt": [[{"role": "user", "content": p}] for p in PROMPTS]})
    GRPOTrainer(model="tiny", reward_funcs=[rm, recorder], reward_processing_classes=[rm_tok, None],
                args=small(tmp_path, max_steps=1), train_dataset=dataset).train()
    call = seen.calls[0]
    texts = [apply_chat_template({"messages": p + c}, AutoTokenizer.from_pretrained(folder))["text"]
             for p, c in zip(call["prompts"], call["completions"], strict=True)]
    expected = _scores_one_by_one(folder, texts)
    row = metrics(tmp_path / "out")[0]
    assert row["rewards/rm-obj/mean"] == pytest.approx(sum(expected) / len(expected), rel=1e-4, abs=1e-5)


def test_grpo_config_takes_what_a_yaml_takes(tmp_path, caplog):
    """TRL's GRPOConfig line works from Python as from YAML: TRL keys and value forms read, ignored
    keys named in a warning; still a plain dataclass for the rest of the code."""
    import dataclasses

    from rlreason.config import from_dict

    line = dict(bf16=False, use_cpu=True, scale_rewards=False, report_to="none", learning_rate=1, seed=5)
    with caplog.at_level("WARNING", logger="rlreason.config"):
        cfg = GRPOConfig(tmp_path / "o", **line)  # output_dir first and positional, as in TRL; a Path too
    assert cfg.output_dir == str(tmp_path / "o") and cfg.scale_rewards == "none" and cfg.report_to == []
    assert cfg.learning_rate == 1.0 and isinstance(cfg.learning_rate, float)
    assert "'bf16'" in caplog.text and "'use_cpu'" in caplog.text
    assert cfg == from_dict({"output_dir": str(tmp_path / "o"), **line})  # the YAML path: the same config
    assert dataclasses.replace(cfg, seed=6).seed == 6 and cfg.to_dict()["seed"] == 5


def test_wrong_arguments_are_refused_clearly(tiny_path, tmp_path):
    dataset = datasets.Dataset.from_dict({"prompt": PROMPTS})

    def ok(completions, **kwargs):
        return [0.0] * len(completions)

    with pytest.raises(ValueError, match="tools need conversational prompts"):  # TRL parses calls from messages only
        GRPOTrainer(model="tiny", reward_funcs=ok, args=small(tmp_path / "t"), train_dataset=dataset, tools=[len])
    with pytest.raises(NotImplementedError, match="optimizer"):
        GRPOTrainer(model="tiny", reward_funcs=ok, args=small(tmp_path / "o"), train_dataset=dataset,
                    optimizers=(object(), None))
    with pytest.raises(ValueError, match="reward_processing_classes"):
        GRPOTrainer(model="tiny", reward_funcs=[ok, ok], reward_processing_classes=[None],
                    args=small(tmp_path / "r"), train_dataset=dataset)
    with pytest.raises(ConfigError) as info:  # one error naming every bad key, as for a YAML file
        GRPOConfig(output_dir=str(tmp_path), learning_rat=1e-5, sync_reff_model=True, bf16=True)
    assert "learning_rate" in str(info.value) and "sync_reff_model" in str(info.value)
    # a causal LM is not a reward model: named at start-up
    with pytest.raises(RewardSpecError, match="sequence-classification"):
        GRPOTrainer(model="tiny", reward_funcs=[AutoModelForCausalLM.from_pretrained(tiny_path)],
                    args=small(tmp_path / "m"), train_dataset=dataset)

    def reward_wrong_length(completions, **kwargs):
        return [1.0] * (len(completions) + 1)  # one too many, also when retried one completion at a time

    trainer = GRPOTrainer(model="tiny", reward_funcs=reward_wrong_length, args=small(tmp_path / "w"),
                          train_dataset=dataset)
    with pytest.raises(RewardFailureError, match="reward_wrong_length"):
        trainer.train()


def test_accuracy_reward_without_an_answer_column_is_named_at_start(tmp_path):
    dataset = datasets.Dataset.from_dict({"prompt": PROMPTS})
    with pytest.raises(RewardSpecError, match="accuracy"):
        GRPOTrainer(model="tiny", reward_funcs="accuracy", args=small(tmp_path), train_dataset=dataset)


def test_peft_config(tmp_path):
    """TRL's peft_config: a fresh LoRA adapter; the final model is saved."""
    from peft import LoraConfig

    dataset = datasets.Dataset.from_dict({"prompt": PROMPTS})

    def reward_len(completions, **kwargs):
        return [-abs(20 - len(completion)) for completion in completions]

    trainer = GRPOTrainer(model="tiny", reward_funcs=reward_len, args=small(tmp_path, max_steps=1),
                          train_dataset=dataset, peft_config=LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    assert any("lora_A" in n for n, _ in trainer.model.named_parameters())
    trainer.train()
    assert any((tmp_path / "out" / "final_model").iterdir())
    # a PEFT model object, as TRL takes one: trained as it is (its adapter, not a second one)
    from peft import get_peft_model

    base = AutoModelForCausalLM.from_pretrained(trainer.model.base_model.model.config._name_or_path)
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    second = GRPOTrainer(model=peft_model, reward_funcs=reward_len, args=small(tmp_path / "b", max_steps=1),
                         train_dataset=dataset)
    adapted = {n for n, p in second.model.named_parameters() if p.requires_grad}
    assert adapted and all("lora_" in n for n in adapted) and not any("o_proj.lora" in n for n in adapted)
    second.train()
    assert (tmp_path / "b" / "out" / "final_model").is_dir()


REWARD_FILE = '''
def reward_len(completions, **kwargs):
    return [-abs(20 - len(completion)) for completion in completions]
'''


def test_yaml_recipe_and_python_api_are_one_path(tmp_path):
    """The same run from a YAML file through recipes/grpo_math.py and from Python through
    GRPOTrainer: identical first-step metrics (same seed, same data file, same reward)."""
    from _recipes import grpo

    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    (tmp_path / "my_rewards.py").write_text(REWARD_FILE)
    spec = f"{tmp_path / 'my_rewards.py'}:reward_len"
    keys = dict(per_device_train_batch_size=8, gradient_accumulation_steps=1, num_generations=4,
                max_completion_length=16, max_steps=1, learning_rate=1e-5, seed=3, loss_type="grpo",
                scale_rewards="group", epsilon=0.2, epsilon_high=0.2, beta=0.0, logging_steps=1, save_steps=0,
                eval_steps=0, final_eval_size=0, log_completions_steps=0, reward_num_workers=0, progress=False,
                max_prompt_length=64, model_name_or_path="tiny", use_chat_template=None)
    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text(json.dumps({**keys, "output_dir": str(tmp_path / "yaml"), "dataset_name": str(data),
                                     "reward_funcs": [spec], "report_to": "none", "bf16": False}))
    grpo(["--config", str(yaml_file)])
    GRPOTrainer(model="tiny", reward_funcs=spec, train_dataset=datasets.Dataset.from_json(str(data)),
                args=GRPOConfig(**{k: v for k, v in keys.items() if k != "model_name_or_path"},
                                output_dir=str(tmp_path / "api"), report_to="none", bf16=False)).train()
    a, b = metrics(tmp_path / "yaml")[0], metrics(tmp_path / "api")[0]
    assert a["reward/std"] > 0 and a["grad_norm"] > 0  # a step that trains, not two empty ones
    for key in ("reward/mean", "reward/std", "loss", "grad_norm", "entropy", "completion/mean_length"):
        assert a[key] == b[key], key


def test_reward_model_folder_in_a_yaml_config(tiny_path, tmp_path):
    """A local reward-model folder in a YAML config's reward_funcs (the recipe's path): scored and
    logged under the folder's name; one that cannot score the data is named at start-up."""
    from _recipes import grpo

    folder = _reward_model(tiny_path, tmp_path / "yaml-rm")
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    argv = ["--model_name_or_path", "tiny", "--dataset_name", str(data), "--reward_funcs", f"[{folder}]",
            "--per_device_train_batch_size", "8", "--gradient_accumulation_steps", "1", "--num_generations", "4",
            "--max_completion_length", "16", "--max_steps", "1", "--learning_rate", "1e-5", "--seed", "0",
            "--save_steps", "0", "--eval_steps", "0", "--final_eval_size", "0", "--log_completions_steps", "0",
            "--reward_num_workers", "1", "--progress", "false", "--max_prompt_length", "64", "--report_to", "none"]
    grpo([*argv, "--output_dir", str(tmp_path / "out")])
    row = metrics(tmp_path / "out")[0]
    assert row["rewards/yaml-rm/failures"] == 0 and row["rewards/yaml-rm/std"] > 0
    # conversational prompts need the reward tokenizer's chat template: without one, named before training
    for name in ("chat_template.jinja", "chat_template.json"):
        (folder / name).unlink(missing_ok=True)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    assert not AutoTokenizer.from_pretrained(folder).chat_template
    with pytest.raises(ValueError, match="yaml-rm.*chat template"):
        grpo([*argv, "--output_dir", str(tmp_path / "out2"), "--system_prompt", "Be brief."])
    assert not (tmp_path / "out2" / "metrics.jsonl").exists()
