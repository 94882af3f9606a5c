"""Tests for rlreason.data: loading, prompt rendering, preparation and the arithmetic dataset.

Everything is local: data files are written to ``tmp_path`` and the tokenizer is built in
memory, because hub downloads are unavailable in the test environment.
"""

from __future__ import annotations

import json
import logging

import datasets
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from rlreason import data
from rlreason.data import arith_dataset, load_dataset_any, prepare, render_prompt

ROWS = [
    {"question": "1+2", "answer": "3", "level": 1},
    {"question": "4-1", "answer": "3", "level": 2},
]

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

VOCAB = {
    "[UNK]": 0,
    "[BOS]": 1,
    "<|": 2,
    "|>": 3,
    "user": 4,
    "assistant": 5,
    "system": 6,
    "hi": 7,
    "one": 8,
    "two": 9,
    "three": 10,
    "four": 11,
    "five": 12,
}


@pytest.fixture
def tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer with a chat template, built without any download.

    Its post-processor prepends ``[BOS]``, so a test can tell whether special tokens were added.
    """
    backend = Tokenizer(models.WordLevel(VOCAB, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(single="[BOS] $A", special_tokens=[("[BOS]", 1)])
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", bos_token="[BOS]")
    tok.chat_template = CHAT_TEMPLATE
    return tok


def _as_rows(ds: datasets.Dataset) -> list[dict]:
    return [dict(r) for r in ds]


# --------------------------------------------------------------------------- loading


def test_load_jsonl(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    ds = load_dataset_any(str(path))
    assert _as_rows(ds) == ROWS


def test_load_json(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps(ROWS))
    ds = load_dataset_any(str(path))
    assert _as_rows(ds) == ROWS


def test_load_parquet(tmp_path):
    path = tmp_path / "d.parquet"
    datasets.Dataset.from_list(ROWS).to_parquet(str(path))
    ds = load_dataset_any(str(path))
    assert _as_rows(ds) == ROWS


def test_load_csv(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("question,answer,level\n1+2,3,1\n4-1,3,2\n")
    ds = load_dataset_any(str(path))
    assert ds.column_names == ["question", "answer", "level"]
    assert ds["question"] == ["1+2", "4-1"]
    # CSV has no types: the reader infers integers for the numeric answer column.
    assert ds["answer"] == [3, 3]


def test_load_split_slice_of_file(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    assert len(load_dataset_any(str(path), split="train[:1]")) == 1


def test_load_save_to_disk_dataset(tmp_path):
    target = tmp_path / "saved"
    datasets.Dataset.from_list(ROWS).save_to_disk(str(target))
    assert _as_rows(load_dataset_any(str(target))) == ROWS


def test_load_save_to_disk_dataset_dict_picks_split(tmp_path):
    target = tmp_path / "saved_dict"
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(ROWS), "test": datasets.Dataset.from_list(ROWS[:1])}
    ).save_to_disk(str(target))
    assert len(load_dataset_any(str(target), split="test")) == 1
    with pytest.raises(ValueError, match="validation"):
        load_dataset_any(str(target), split="validation")


def test_load_missing_file_names_path(tmp_path):
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load_dataset_any(str(missing))


def test_load_missing_relative_file_is_not_a_hub_id():
    # A bare name with a data extension is a path, not a hub id, so no download is attempted.
    with pytest.raises(FileNotFoundError, match="missing_data.csv"):
        load_dataset_any("missing_data.csv")


def test_load_hub_failure_is_wrapped(monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("network unreachable")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(ValueError, match="some-owner/some-set") as info:
        load_dataset_any("some-owner/some-set")
    assert "offline" in str(info.value)
    assert isinstance(info.value.__cause__, ConnectionError)


# --------------------------------------------------------------------------- render_prompt


def test_render_template_uses_columns_and_prompt_alias():
    row = {"question": "1+2", "answer": "3", "level": 1}
    text = render_prompt(row, prompt_column="question", template="L{level} Question: {prompt}\nAnswer:")
    assert text == "L1 Question: 1+2\nAnswer:"


def test_render_template_missing_placeholder_names_it():
    row = {"question": "1+2", "answer": "3"}
    with pytest.raises(ValueError, match="context") as info:
        render_prompt(row, prompt_column="question", template="{context}\n{prompt}")
    assert "question" in str(info.value)  # the available columns are listed


def test_render_raw_without_template_or_chat():
    assert render_prompt({"q": "1+2"}, prompt_column="q", use_chat_template=False) == "1+2"


def test_render_system_prompt_raw_text(tokenizer):
    text = render_prompt(
        {"q": "1+2"}, prompt_column="q", tokenizer=tokenizer, use_chat_template=False, system_prompt="Be brief."
    )
    assert text == "Be brief.\n1+2"


def test_render_missing_prompt_column():
    with pytest.raises(ValueError, match="'q'"):
        render_prompt({"question": "1+2"}, prompt_column="q")


def test_render_chat_template_exact(tokenizer):
    text = render_prompt({"q": "hi"}, prompt_column="q", tokenizer=tokenizer)
    assert text == "<|user|>hi\n<|assistant|>"


def test_render_chat_template_system_first(tokenizer):
    text = render_prompt(
        {"q": "1+2"}, prompt_column="q", tokenizer=tokenizer, template="Q: {prompt}", system_prompt="Be brief."
    )
    assert text == "<|system|>Be brief.\n<|user|>Q: 1+2\n<|assistant|>"
    assert text.startswith("<|system|>")


def test_render_tokenizer_without_chat_template_falls_back_to_raw(tokenizer):
    tokenizer.chat_template = None
    assert render_prompt({"q": "hi"}, prompt_column="q", tokenizer=tokenizer, system_prompt="S") == "S\nhi"


def test_render_conversational_prepends_system():
    row = {"messages": [{"role": "user", "content": "hi"}]}
    out = render_prompt(row, prompt_column="messages", use_chat_template=False, system_prompt="Be brief.")
    assert out == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    assert row["messages"] == [{"role": "user", "content": "hi"}]  # the row itself is not mutated


def test_render_conversational_keeps_existing_system(tokenizer):
    row = {"messages": [{"role": "system", "content": "Mine."}, {"role": "user", "content": "hi"}]}
    text = render_prompt(row, prompt_column="messages", tokenizer=tokenizer, system_prompt="Other.")
    assert text == "<|system|>Mine.\n<|user|>hi\n<|assistant|>"


def test_render_conversational_rejects_template():
    row = {"messages": [{"role": "user", "content": "hi"}]}
    with pytest.raises(ValueError, match="conversational"):
        render_prompt(row, prompt_column="messages", template="{prompt}")


# --------------------------------------------------------------------------- prepare


def test_prepare_column_map_renames_and_keeps_other_columns():
    ds = datasets.Dataset.from_list(ROWS)
    out = prepare(ds, column_map={"question": "prompt"}, use_chat_template=False)
    assert set(out.column_names) == {"prompt", "answer", "level", "prompt_text"}
    assert out["prompt_text"] == ["1+2", "4-1"]
    assert out["level"] == [1, 2]


def test_prepare_missing_column_lists_actual_columns():
    ds = datasets.Dataset.from_list(ROWS)
    with pytest.raises(ValueError) as info:
        prepare(ds)
    message = str(info.value)
    assert "'prompt'" in message
    assert "question" in message and "level" in message
    assert "column_map" in message


def test_prepare_missing_answer_column():
    ds = datasets.Dataset.from_list([{"prompt": "hi"}])
    with pytest.raises(ValueError, match="'answer'"):
        prepare(ds, answer_column="answer")  # asked for: named
    # not asked for (the default): a prompt-only dataset, as TRL takes one
    assert prepare(ds, use_chat_template=False)["prompt_text"] == ["hi"]


def test_prepare_standard_and_conversational_as_trl(tokenizer):
    """use_chat_template None: a string prompt stays plain text, a message list is chat-templated,
    a string with a system prompt becomes a conversation (open-r1's system_prompt)."""
    plain = datasets.Dataset.from_list([{"prompt": "hi"}])
    out = prepare(plain, tokenizer=tokenizer, use_chat_template=None)
    assert out["prompt_text"] == ["hi"] and "prompt_messages" not in out.column_names
    out = prepare(plain, tokenizer=tokenizer, use_chat_template=None, system_prompt="one")
    assert out["prompt_text"] == ["<|system|>one\n<|user|>hi\n<|assistant|>"]
    assert out["prompt_messages"] == [[{"role": "system", "content": "one"}, {"role": "user", "content": "hi"}]]
    conv = datasets.Dataset.from_list([{"prompt": [{"role": "user", "content": "hi"}]}])
    assert prepare(conv, tokenizer=tokenizer, use_chat_template=None)["prompt_text"] == ["<|user|>hi\n<|assistant|>"]
    with pytest.raises(ValueError, match="use_chat_template"):
        prepare(conv, tokenizer=tokenizer, use_chat_template=False)


def test_prepare_column_map_unknown_source():
    ds = datasets.Dataset.from_list(ROWS)
    with pytest.raises(ValueError, match="nonexistent"):
        prepare(ds, column_map={"nonexistent": "prompt"})


def test_prepare_prompt_ids_without_extra_special_tokens(tokenizer):
    ds = datasets.Dataset.from_list([{"prompt": "hi", "answer": "x"}])
    out = prepare(ds, tokenizer=tokenizer)
    assert out["prompt_text"] == ["<|user|>hi\n<|assistant|>"]
    # <| user |> hi <| assistant |> -- and no [BOS] (id 1), which add_special_tokens=True would prepend.
    assert out["prompt_ids"] == [[2, 4, 3, 7, 2, 5, 3]]


def test_prepare_conversational_rows(tokenizer):
    ds = datasets.Dataset.from_list([{"prompt": [{"role": "user", "content": "hi"}], "answer": "x"}])
    out = prepare(ds, tokenizer=tokenizer, system_prompt="one")
    assert out["prompt_text"] == ["<|system|>one\n<|user|>hi\n<|assistant|>"]


def test_prepare_conversational_without_chat_template_fails():
    ds = datasets.Dataset.from_list([{"prompt": [{"role": "user", "content": "hi"}], "answer": "x"}])
    with pytest.raises(ValueError, match="chat template"):
        prepare(ds, use_chat_template=False)


def test_prepare_max_prompt_length_drops_and_logs(tokenizer, caplog):
    prompts = ["one", "one two three", "one two three four", "one two three four five"]
    ds = datasets.Dataset.from_list([{"prompt": p, "answer": str(i)} for i, p in enumerate(prompts)])
    with caplog.at_level(logging.WARNING, logger="rlreason.data"):
        out = prepare(ds, tokenizer=tokenizer, use_chat_template=False, max_prompt_length=3)
    assert out["prompt"] == ["one", "one two three"]
    assert out["answer"] == ["0", "1"]  # the answers stay aligned with their prompts
    records = [r for r in caplog.records if r.name == "rlreason.data" and r.levelno == logging.WARNING]
    assert len(records) == 1
    assert "dropped 2 of 4" in records[0].getMessage()
    assert "max_prompt_length=3" in records[0].getMessage()


def test_prepare_max_prompt_length_no_drop_no_warning(tokenizer, caplog):
    ds = datasets.Dataset.from_list([{"prompt": "one two", "answer": "x"}])
    with caplog.at_level(logging.WARNING, logger="rlreason.data"):
        out = prepare(ds, tokenizer=tokenizer, use_chat_template=False, max_prompt_length=2)
    assert len(out) == 1
    assert not [r for r in caplog.records if r.name == "rlreason.data"]


def test_prepare_max_prompt_length_all_dropped_fails(tokenizer):
    ds = datasets.Dataset.from_list([{"prompt": "one two", "answer": "x"}])
    with pytest.raises(ValueError, match="all 1 prompts"):
        prepare(ds, tokenizer=tokenizer, use_chat_template=False, max_prompt_length=1)


def test_prepare_max_prompt_length_needs_tokenizer():
    ds = datasets.Dataset.from_list([{"prompt": "one", "answer": "x"}])
    with pytest.raises(ValueError, match="tokenizer"):
        prepare(ds, max_prompt_length=4)


def test_prepare_on_loaded_file(tmp_path, tokenizer):
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    out = prepare(
        load_dataset_any(str(path)),
        column_map={"question": "prompt"},
        template="Q {prompt} L{level}",
        tokenizer=tokenizer,
    )
    assert out["prompt_text"][0] == "<|user|>Q 1+2 L1\n<|assistant|>"


# --------------------------------------------------------------------------- arith_dataset


def test_arith_dataset_shape_and_determinism():
    ds = arith_dataset(20, seed=3, split="train")
    assert len(ds) == 20
    assert ds.column_names == ["prompt", "answer"]
    assert _as_rows(ds) == _as_rows(arith_dataset(20, seed=3, split="train"))
    assert ds["prompt"] != arith_dataset(20, seed=4, split="train")["prompt"]
    # The answer is the evaluated expression (only + and - occur, so eval is safe here).
    assert all(str(eval(p)) == a for p, a in zip(ds["prompt"], ds["answer"], strict=True))


def test_arith_dataset_splits_disjoint():
    train = set(arith_dataset(200, seed=0, split="train")["prompt"])
    heldout = set(arith_dataset(200, seed=0, split="heldout")["prompt"])
    assert len(train) == 200 and len(heldout) == 200
    assert not train & heldout


def test_arith_dataset_difficulty_and_empty():
    ds = arith_dataset(10, seed=1, split="train", difficulty=data.arith.Difficulty(min_terms=3, max_terms=3))
    assert all(sum(p.count(op) for op in "+-") == 2 for p in ds["prompt"])
    empty = arith_dataset(0, seed=1, split="train")
    assert len(empty) == 0 and empty.column_names == ["prompt", "answer"]


def test_filter_rows_keeps_listed_values_and_names_a_missing_column():
    from rlreason.data import filter_rows

    ds = datasets.Dataset.from_list([{"problem": str(i), "level": f"Level {i % 5 + 1}"} for i in range(20)])
    kept = filter_rows(ds, {"level": ["Level 3", "Level 4", "Level 5"]})
    assert len(kept) == 12 and set(kept["level"]) == {"Level 3", "Level 4", "Level 5"}
    assert filter_rows(ds, {}) is ds
    with pytest.raises(ValueError, match="dataset_filter.*'difficulty'.*problem, level"):
        filter_rows(ds, {"difficulty": ["hard"]})
    with pytest.raises(ValueError, match="dataset_filter.*no row"):
        filter_rows(ds, {"level": ["Level 9"]})


def test_column_map_onto_an_existing_column_is_a_clear_error():
    # open-r1 datasets may have both 'solution' and 'answer'; mapping one onto the other was a raw pyarrow error
    ds = datasets.Dataset.from_dict({"problem": ["1+1"], "solution": ["2"], "answer": ["2"]})
    with pytest.raises(ValueError, match="renames 'solution' to 'answer', but the dataset already has a column"):
        prepare(ds, prompt_column="problem", column_map={"solution": "answer"}, use_chat_template=False)
    with pytest.raises(ValueError, match="renames several columns to 'gold'"):
        prepare(ds, prompt_column="problem", column_map={"solution": "gold", "answer": "gold"},
                use_chat_template=False)
    # a swap is fine: the existing target is itself renamed away
    out = prepare(ds, prompt_column="problem", column_map={"solution": "answer", "answer": "old_answer"},
                  use_chat_template=False)
    assert {"answer", "old_answer"} <= set(out.column_names)


def test_accuracy_reads_the_gold_from_solution_or_the_configured_column():
    from rlreason.rewards import RewardSignatureError, build_rewards

    done = [[{"role": "assistant", "content": "<answer>2</answer>"}]]
    (acc,), _ = build_rewards(["accuracy"], columns={"problem", "solution"})  # open-r1's column name
    assert acc(prompts=[None], completions=done, solution=["$2$"]) == [1.0]
    (acc,), _ = build_rewards([{"name": "accuracy", "kwargs": {"gold_column": "gold"}}], columns={"gold", "answer"})
    assert acc(prompts=[None], completions=done, gold=["2"], answer=["3"]) == [1.0]
    with pytest.raises(RewardSignatureError, match="needs the gold column 'answer' or 'solution'"):
        build_rewards(["accuracy"], columns={"problem", "gold"})
