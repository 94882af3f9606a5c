"""The tool-calling tiny model's tokenizer (``tiny-tools``): its compact chat template, the warm-up's
multi-turn examples (labels on the model's turns only), and its response template."""

from __future__ import annotations

import random

import pytest
from transformers import AutoTokenizer

from rlreason import tiny
from rlreason.data.tasks import mul

CALL = {"type": "function", "function": {"name": "multiply", "arguments": {"a": 123, "b": 456}}}
EXCHANGE = [{"role": "assistant", "content": "", "tool_calls": [CALL]},
            {"role": "tool", "name": "multiply", "content": "56088"},
            {"role": "assistant", "content": "<answer>56088</answer>"}]
USER = [{"role": "user", "content": "123*456"}]


@pytest.fixture(scope="module")
def tok():
    """The tiny-tools tokenizer, as its build trains it (seconds: no model, no warm-up)."""
    return tiny.build_spec_tokenizer(tiny.TINY_TOOLS)


def test_template_renders_tools_as_one_short_line_and_calls_in_hermes_format(tok):
    text = tok.apply_chat_template(USER + EXCHANGE, tools=tiny.tool_schemas(), tokenize=False)
    assert text == ("<|im_start|>system\ntools: multiply(a, b)<|im_end|>\n"
                    "<|im_start|>user\n123*456<|im_end|>\n"
                    '<|im_start|>assistant\n<tool_call>{"name": "multiply", "arguments": {"a": 123, "b": 456}}'
                    "</tool_call><|im_end|>\n"
                    "<|im_start|>tool\n56088<|im_end|>\n"
                    "<|im_start|>assistant\n<answer>56088</answer><|im_end|>\n")
    # no tools, no system turn; a system message and the tools share one; arguments given as a JSON string
    assert tok.apply_chat_template(USER, tokenize=False, add_generation_prompt=True) == (
        "<|im_start|>user\n123*456<|im_end|>\n<|im_start|>assistant\n")
    two = [tiny.tool_schemas()[0], {"type": "function", "function": {"name": "now", "parameters": {}}}]
    assert tok.apply_chat_template([{"role": "system", "content": "Be brief."}, *USER], tools=two,
                                   tokenize=False) == (
        "<|im_start|>system\nBe brief.\ntools: multiply(a, b); now()<|im_end|>\n<|im_start|>user\n123*456<|im_end|>\n")
    as_string = [{"role": "assistant", "content": "",
                  "tool_calls": [{"type": "function", "function": {"name": "multiply", "arguments": '{"a": 1}'}}]}]
    assert tok.apply_chat_template(as_string, tokenize=False) == (
        '<|im_start|>assistant\n<tool_call>{"name": "multiply", "arguments": {"a": 1}}</tool_call><|im_end|>\n')


def test_tool_markers_are_single_tokens_that_decoding_keeps(tok):
    ids = tok(mul.call_text(mul.Problem(123, 456)), add_special_tokens=False)["input_ids"]
    assert ids[0] == tok.convert_tokens_to_ids("<tool_call>") and ids[-1] == tok.convert_tokens_to_ids("</tool_call>")
    assert tok.decode(ids, skip_special_tokens=True) == mul.call_text(mul.Problem(123, 456))


def test_exchange_segments_are_what_a_rollout_appends(tok):
    segs = tiny.exchange_segments(tok, USER, EXCHANGE, tiny.tool_schemas())
    assert segs == [
        ("<|im_start|>system\ntools: multiply(a, b)<|im_end|>\n<|im_start|>user\n123*456<|im_end|>\n"
         "<|im_start|>assistant\n", False),
        ('<tool_call>{"name": "multiply", "arguments": {"a": 123, "b": 456}}</tool_call><|im_end|>', True),
        ("\n<|im_start|>tool\n56088<|im_end|>\n<|im_start|>assistant\n", False),
        ("<answer>56088</answer><|im_end|>", True),
    ]


def test_exchange_example_labels_the_model_turns_only(tok):
    ids, labels = tiny.exchange_example(tok, USER, EXCHANGE, tiny.tool_schemas())
    # the ids are the template's own tokenization of the whole exchange (less the newline after the last eos)
    whole = tok.apply_chat_template(USER + EXCHANGE, tools=tiny.tool_schemas(), tokenize=True, return_dict=False)
    assert ids == whole[:-1] and tok.decode(whole[-1:]) == "\n"
    eos = tok.eos_token_id
    trained = [i for i, lab in zip(ids, labels, strict=True) if lab != -100]
    assert all(lab in (-100, i) for i, lab in zip(ids, labels, strict=True))
    assert tok.decode(trained) == ('<tool_call>{"name": "multiply", "arguments": {"a": 123, "b": 456}}</tool_call>'
                                   "<|im_end|><answer>56088</answer><|im_end|>")
    assert trained.count(eos) == 2
    # the tool's answer and the markup around it are not trained
    tool_turn = tok("\n<|im_start|>tool\n56088<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False)
    start = next(k for k in range(len(ids)) if ids[k:k + len(tool_turn["input_ids"])] == tool_turn["input_ids"])
    assert labels[start:start + len(tool_turn["input_ids"])] == [-100] * len(tool_turn["input_ids"])
    # an in-head answer is one trained turn
    head = [{"role": "assistant", "content": "<think>123*456~120*460</think><answer>55200</answer>"}]
    ids, labels = tiny.exchange_example(tok, USER, head, tiny.tool_schemas())
    assert tok.decode([i for i, lab in zip(ids, labels, strict=True) if lab != -100]) == (
        head[0]["content"] + "<|im_end|>")


def test_response_template_parses_a_call_and_is_saved_with_the_tokenizer(tok, tmp_path):
    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert again.response_template == tiny.TOOLS_RESPONSE_TEMPLATE
    call = tok(mul.call_text(mul.Problem(123, 456)) + "<|im_end|>", add_special_tokens=False)["input_ids"]
    assert again.parse_response(call, prefix="") == {"role": "assistant", "tool_calls": [CALL]}
    answer = tok("<answer>56088</answer><|im_end|>", add_special_tokens=False)["input_ids"]
    assert again.parse_response(answer, prefix="") == {"role": "assistant", "content": "<answer>56088</answer>"}
    from trl.chat_template_utils import supports_tool_calling

    assert supports_tool_calling(again)


def test_warmup_batches_follow_the_teacher(tok):
    spec = tiny.TINY_TOOLS
    problems = mul.generate(64, seed=0)
    batch = tiny._tools_batch(tok, spec, problems, random.Random(3), tiny.tool_schemas())
    rng = random.Random(3)
    calls = sum(len(mul.teacher(p, spec.p_tool, rng)) == 3 for p in problems)
    call_id = tok.convert_tokens_to_ids("<tool_call>")
    assert int((batch["labels"] == call_id).any(dim=1).sum()) == calls
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape


def test_the_warmup_inserts_tool_turns_as_the_rollout_does(tok):
    """The warm-up's tool segment is what the trainer's rollout appends after a call
    (rlreason.rollout.tools.parse.tool_suffix_ids, TRL's rule): the model is warmed up on the
    exact tokens RL will show it."""
    from rlreason.rollout.tools.parse import parse_assistant, tool_suffix_ids

    segs = tiny.exchange_segments(tok, USER, EXCHANGE, tiny.tool_schemas())
    assert tok(segs[2][0], add_special_tokens=False)["input_ids"] == tool_suffix_ids(tok, [EXCHANGE[1]])
    prompt = tok(segs[0][0], add_special_tokens=False)["input_ids"]
    turn = tok(segs[1][0], add_special_tokens=False)["input_ids"]
    assert parse_assistant(tok, turn, prompt, tiny.tool_schemas()) == {"role": "assistant", "content": "",
                                                                        "tool_calls": [CALL]}
