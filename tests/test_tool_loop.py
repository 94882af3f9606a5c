"""The multi-turn tool loop (rlreason/rollout/tools/loop.py) and the parsing under it (parse.py).

A scripted engine (a RolloutEngine whose ``generate`` returns scripted text per call, as token
ids with recognisable log-probs, and records what it was asked) and the real tiny tokenizer
with a tool-capable ChatML template (Qwen2.5's tool format, a short system block). Expected ids
are built by hand: the conversation rendered by the chat template and tokenized whole, and the
tool suffixes written out as text, never taken from the code under test.
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from rlreason.loop.experience import Rollout, rollout_from_state, rollout_state
from rlreason.rollout.base import RolloutEngine, Sample, SamplingConfig
from rlreason.rollout.tools.loop import generate_with_tools, turn_seed
from rlreason.rollout.tools.parse import (
    check_tool_template,
    parse_assistant,
    parse_hermes,
    supports_tool_calling,
    tool_suffix_ids,
    use_response_template,
)

# Qwen2.5's tool format (tool calls as <tool_call> JSON, tool answers as <tool_response> blocks in one
# user turn) with a short tools block instead of Qwen's long system prompt.
TOOL_TEMPLATE = (  # every output in {{ }}: transformers renders with trim_blocks, which eats a newline after a tag
    "{% if tools %}{{ '<|im_start|>system\\n# Tools\\n<tools>' }}"
    "{% for t in tools %}{{ '\\n' + (t | tojson) }}{% endfor %}{{ '\\n</tools><|im_end|>\\n' }}{% endif %}"
    "{% for message in messages %}"
    "{% if message.role == 'assistant' %}{{ '<|im_start|>assistant\\n' + message.content }}"
    "{% for call in message.tool_calls or [] %}{% if message.content or not loop.first %}{{ '\\n' }}{% endif %}"
    "{{ '<tool_call>\\n{\"name\": \"' + call.function.name + '\", \"arguments\": ' + (call.function.arguments | tojson)"
    " + '}\\n</tool_call>' }}{% endfor %}{{ '<|im_end|>\\n' }}"
    "{% elif message.role == 'tool' %}"
    "{% if loop.first or messages[loop.index0 - 1].role != 'tool' %}{{ '<|im_start|>user' }}{% endif %}"
    "{{ '\\n<tool_response>\\n' + message.content + '\\n</tool_response>' }}"
    "{% if loop.last or messages[loop.index0 + 1].role != 'tool' %}{{ '<|im_end|>\\n' }}{% endif %}"
    "{% else %}{{ '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def mul(a: int, b: int) -> int:
    """Multiply two integers.

    Args:
        a: the first factor
        b: the second factor
    """
    return a * b


def add(a: int, b: int) -> int:
    """Add two integers.

    Args:
        a: the first term
        b: the second term
    """
    return a + b


TOOLS = {"mul": mul, "add": add}
SCHEMAS = [{"type": "function", "function": {
    "name": name, "description": f.__doc__.splitlines()[0],
    "parameters": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                   "required": ["a", "b"]}}} for name, f in TOOLS.items()]


@dataclass
class Start:
    """Interface 2's EpisodeStart, as the loop reads it (the executor's own lands with part E)."""

    observation: str | None
    schemas: list[dict]
    error: str | None = None


@dataclass
class Result:
    """Interface 2's ToolResult, as the loop reads it."""

    name: str
    content: str
    failed: bool
    reason: str | None = None
    truncated: bool = False


def run_calls(requests: list[tuple[int, list[dict]]], log: list | None = None) -> list[list[Result]]:
    """The tools called in-process: what the executor answers, minus the isolation."""
    if log is not None:
        log.append(requests)
    out = []
    for _, calls in requests:
        answers = []
        for call in calls:
            fn = call["function"]
            if fn["name"] not in TOOLS:
                answers.append(Result(fn["name"], f"unknown tool {fn['name']!r}", True, "unknown_tool"))
                continue
            try:
                answers.append(Result(fn["name"], str(TOOLS[fn["name"]](**fn["arguments"])), False))
            except Exception as e:  # noqa: BLE001 - the model sees any failure as text
                answers.append(Result(fn["name"], f"error: {e}", True, "raised"))
        out.append(answers)
    return out


def call(name: str, **args) -> str:
    return f'<tool_call>\n{{"name": "{name}", "arguments": {json.dumps(args)}}}\n</tool_call>'


class ScriptedEngine:
    """``generate`` call k answers ``script[k]``: per prompt, n texts (tokenized here; the k-th
    call's t-th token gets log-prob -(k + 1) - t / 1000). A text longer than ``max_tokens`` is cut
    (finish "length"). Records every call's (prompts, n, sampling, seeds)."""

    def __init__(self, tokenizer, script: list[list[list[str]]]) -> None:
        self.tok, self.script, self.calls = tokenizer, list(script), []

    def generate(self, prompts, n, sampling, seeds=None):
        k = len(self.calls)
        self.calls.append((prompts, n, sampling, seeds))
        texts = self.script[k]
        assert len(texts) == len(prompts) and all(len(g) == n for g in texts)
        return [[self._sample(t, k, sampling.max_tokens) for t in g] for g in texts]

    def _sample(self, text: str, k: int, max_tokens: int) -> Sample:
        ids = self.tok(text, add_special_tokens=False)["input_ids"][:max_tokens]
        lps = [-(k + 1) - t / 1000 for t in range(len(ids))]
        reason = "stop" if ids[-1] == self.tok.eos_token_id else "length"
        return Sample(ids, self.tok.decode(ids, skip_special_tokens=True), lps, reason)

    def load_weights(self, named_tensors) -> None:
        pass

    def close(self) -> None:
        pass


@pytest.fixture(scope="module")
def tok(tiny_path):
    t = AutoTokenizer.from_pretrained(tiny_path)
    t.chat_template = TOOL_TEMPLATE
    return t


def ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def prompt(tok, question: str) -> list[int]:
    return tok.apply_chat_template([{"role": "user", "content": question}], tools=SCHEMAS,
                                   add_generation_prompt=True, tokenize=True, return_dict=False)


def starts(k: int, errors: dict[int, str] | None = None) -> list[Start]:
    return [Start(None, SCHEMAS, (errors or {}).get(i)) for i in range(k)]


def run(tok, engine, prompts, n, max_tokens=512, seeds=None, max_iterations=None, max_model_len=4096,
        errors=None, log=None):
    return generate_with_tools(engine, tok, prompts, n, SamplingConfig(max_tokens=max_tokens), seeds,
                               starts(len(prompts) * n, errors), lambda req: run_calls(req, log),
                               max_iterations, max_model_len)


EOS = "<|im_end|>"
TURN1 = "Let me compute." + "\n" + call("mul", a=12, b=13) + EOS
TURN2 = "The answer is 156." + EOS
# what the template inserts for one tool answer "156", written out by hand
SUFFIX_156 = "\n<|im_start|>user\n<tool_response>\n156\n</tool_response><|im_end|>\n<|im_start|>assistant\n"


# --------------------------------------------------------------------------- parsing


def test_the_test_template_renders_tools_and_the_plain_chatml_one_does_not(tok, tiny_path):
    assert supports_tool_calling(tok)
    plain = AutoTokenizer.from_pretrained(tiny_path)  # the tiny model's own ChatML: no tool_calls rendered
    assert not supports_tool_calling(plain)
    with pytest.raises(ValueError, match=re.escape(f"{str(tiny_path)!r}") + ".*cannot render tool calls"):
        check_tool_template(plain)
    check_tool_template(tok)


def test_hermes_parsing_reads_calls_and_falls_back_to_text_on_malformed_ones():
    two = "Both:\n" + call("mul", a=2, b=3) + "\n" + call("nope", x=1)
    assert parse_hermes(two) == {"role": "assistant", "content": "Both:", "tool_calls": [
        {"type": "function", "function": {"name": "mul", "arguments": {"a": 2, "b": 3}}},
        {"type": "function", "function": {"name": "nope", "arguments": {"x": 1}}}]}  # unknown tool: still a call
    assert parse_hermes("no calls here") == {"role": "assistant", "content": "no calls here"}
    for bad in ['<tool_call>\n{"name": "mul", "arguments": {"a": 1}\n</tool_call>',  # broken JSON
                '<tool_call>\n{"arguments": {"a": 1}}\n</tool_call>',  # no name
                call("mul", a=1, b=2) + " and then some text",  # text after the calls
                '<tool_call>\n{"name": "mul", "arguments": 5}\n</tool_call>',  # arguments not an object
                '<tool_call>\n{"name": "mul"']:  # cut inside the call
        assert parse_hermes(bad) == {"role": "assistant", "content": bad}, bad
    assert parse_hermes(call("f"))["tool_calls"][0]["function"]["arguments"] == {}


def test_parse_response_and_the_hermes_fallback_read_the_same_turn(tok, tiny_path):
    """With TRL's Qwen2.5 template, TRL sets a response_template and transformers' parse_response
    reads the turn; the fallback reads the same message from the text."""
    trl_utils = pytest.importorskip("trl.chat_template_utils")
    qwen = AutoTokenizer.from_pretrained(tiny_path)
    qwen.chat_template = (Path(trl_utils.__file__).parent / "chat_templates" / "qwen2_5.jinja").read_text()
    assert use_response_template(qwen) == "response_template" and qwen.response_template is not None
    assert use_response_template(tok) == "hermes"  # a template TRL does not know
    p = prompt(qwen, "what is 12*13?")
    for text in [TURN1, "Let me compute.\n" + call("mul", a=1, b=2) + "\n" + call("add", a=3, b=4) + EOS,
                 TURN2, '<tool_call>\n{"name": "mul", "arguments": {"a": 1}\n</tool_call>' + EOS]:
        t = ids(qwen, text)
        assert parse_assistant(qwen, t, p, SCHEMAS) == parse_assistant(tok, t, p, SCHEMAS), text


def test_tool_suffix_is_what_the_template_inserts(tok):
    assert tool_suffix_ids(tok, [{"role": "tool", "name": "mul", "content": "156"}]) == ids(tok, SUFFIX_156)
    two = [{"role": "tool", "name": "mul", "content": "6"}, {"role": "tool", "name": "add", "content": "7"}]
    by_hand = ("\n<|im_start|>user\n<tool_response>\n6\n</tool_response>\n<tool_response>\n7\n</tool_response>"
               "<|im_end|>\n<|im_start|>assistant\n")
    assert tool_suffix_ids(tok, two) == ids(tok, by_hand)


# --------------------------------------------------------------------------- the loop


def test_a_two_turn_rollout_matches_the_conversation_rendered_by_hand(tok):
    p = prompt(tok, "what is 12*13?")
    engine = ScriptedEngine(tok, [[[TURN1]], [[TURN2]]])
    (s,), = run(tok, engine, [p], 1)
    t1, t2, suffix = ids(tok, TURN1), ids(tok, TURN2), ids(tok, SUFFIX_156)
    # the whole exchange, rendered by the chat template and tokenized in one piece, is prompt + completion
    # (+ the newline the template puts after the last <|im_end|>)
    mul_call = {"type": "function", "function": {"name": "mul", "arguments": {"a": 12, "b": 13}}}
    conversation = [{"role": "user", "content": "what is 12*13?"},
                    {"role": "assistant", "content": "Let me compute.", "tool_calls": [mul_call]},
                    {"role": "tool", "name": "mul", "content": "156"},
                    {"role": "assistant", "content": "The answer is 156."}]
    rendered = tok.apply_chat_template(conversation, tools=SCHEMAS, tokenize=True, return_dict=False)
    assert p + s.token_ids + ids(tok, "\n") == rendered
    assert s.token_ids == t1 + suffix + t2
    assert s.loss_mask == [1] * len(t1) + [0] * len(suffix) + [1] * len(t2)
    assert s.logprobs == ([-1 - t / 1000 for t in range(len(t1))] + [0.0] * len(suffix)
                          + [-2 - t / 1000 for t in range(len(t2))])
    assert s.messages == conversation[1:]
    assert s.text == tok.decode(rendered[len(p):-1], skip_special_tokens=True)
    assert s.tool_stats == {"calls": 1, "failures": 0, "turns": 2, "masked_tokens": len(suffix),
                            "per_tool": {"mul": 1}}
    assert s.finish_reason == "stop" and s.error is None
    # the continuation was asked for prompt + turn 1 + suffix exactly, one sample, the budget left
    prompts, n, sampling, seeds = engine.calls[1]
    assert prompts == [p + t1 + suffix] and n == 1 and seeds is None
    assert sampling.max_tokens == 512 - len(t1) - len(suffix)


def test_rollouts_that_call_nothing_wait_and_several_calls_in_a_turn_are_answered_in_order(tok):
    """Two prompts x 2: one rollout calls two tools at once, one calls one, two call nothing; a
    failing call (unknown tool) is answered and counted."""
    p0, p1 = prompt(tok, "a"), prompt(tok, "b")
    both = "Two calls.\n" + call("mul", a=2, b=3) + "\n" + call("add", a=3, b=4) + EOS
    unknown = call("div", a=1, b=0) + EOS
    engine = ScriptedEngine(tok, [[[both, "Plain answer." + EOS], ["Nothing." + EOS, unknown]],
                                  [["Six and seven." + EOS], ["Sorry." + EOS]]])
    log = []
    (a, b), (c, d) = run(tok, engine, [p0, p1], 2, log=log)
    assert log == [[(0, parse_hermes(both[:-len(EOS)])["tool_calls"]),
                    (3, [{"type": "function", "function": {"name": "div", "arguments": {"a": 1, "b": 0}}}])]]
    suffix_two = ids(tok, "\n<|im_start|>user\n<tool_response>\n6\n</tool_response>\n<tool_response>\n7\n"
                          "</tool_response><|im_end|>\n<|im_start|>assistant\n")
    suffix_unknown = ids(tok, "\n<|im_start|>user\n<tool_response>\nunknown tool 'div'\n</tool_response><|im_end|>\n"
                              "<|im_start|>assistant\n")
    assert engine.calls[1][0] == [p0 + ids(tok, both) + suffix_two, p1 + ids(tok, unknown) + suffix_unknown]
    assert a.token_ids == ids(tok, both) + suffix_two + ids(tok, "Six and seven." + EOS)
    assert [m["role"] for m in a.messages] == ["assistant", "tool", "tool", "assistant"]
    assert [m.get("name") for m in a.messages[1:3]] == ["mul", "add"]
    assert a.tool_stats == {"calls": 2, "failures": 0, "turns": 2, "masked_tokens": len(suffix_two),
                            "per_tool": {"mul": 1, "add": 1}}
    for plain, text in ((b, "Plain answer." + EOS), (c, "Nothing." + EOS)):
        assert plain.token_ids == ids(tok, text) and plain.loss_mask == [1] * len(plain.token_ids)
        assert plain.messages == [{"role": "assistant", "content": text[:-len(EOS)]}]
        assert plain.tool_stats["calls"] == 0 and plain.tool_stats["turns"] == 1
    assert d.tool_stats == {"calls": 1, "failures": 1, "turns": 2, "masked_tokens": len(suffix_unknown),
                            "per_tool": {"<unknown>": 1}}


def test_the_iteration_limit_stops_the_exchange(tok):
    p = prompt(tok, "loop")
    again = call("add", a=1, b=1) + EOS
    for limit, turns in ((0, 1), (1, 2), (2, 3)):
        engine = ScriptedEngine(tok, [[[again]]] * 5)
        (s,), = run(tok, engine, [p], 1, max_iterations=limit)
        assert len(engine.calls) == turns and s.tool_stats["turns"] == turns and s.tool_stats["calls"] == turns - 1
        assert s.messages[-1]["tool_calls"]  # the last turn's call is never answered
        assert s.finish_reason == "stop"
    engine = ScriptedEngine(tok, [[[again]]] * 4 + [[[TURN2]]])
    (s,), = run(tok, engine, [p], 1, max_iterations=None)  # TRL's default: no limit
    assert s.tool_stats["turns"] == 5 and "tool_calls" not in s.messages[-1]


def test_the_budget_covers_the_whole_exchange(tok):
    """max_tokens counts model and tool tokens: a tool answer that leaves no room for a model token is
    dropped (rollout ends, finish "length"); a continuation is cut at the budget left; rollouts that
    continue together are each cut at their own budget."""
    p = prompt(tok, "q")
    t1, suffix, t2 = ids(tok, TURN1), ids(tok, SUFFIX_156), ids(tok, TURN2)
    # no room after the answer: dropped, the rollout is its first turn
    engine = ScriptedEngine(tok, [[[TURN1]]])
    (s,), = run(tok, engine, [p], 1, max_tokens=len(t1) + len(suffix))
    assert s.token_ids == t1 and s.finish_reason == "length" and len(s.messages) == 1
    assert s.tool_stats["calls"] == 1 and s.tool_stats["masked_tokens"] == 0 and len(engine.calls) == 1
    # room for 3 model tokens after it: the second turn is cut to 3
    engine = ScriptedEngine(tok, [[[TURN1]], [[TURN2]]])
    (s,), = run(tok, engine, [p], 1, max_tokens=len(t1) + len(suffix) + 3)
    assert s.token_ids == t1 + suffix + t2[:3] and len(s.token_ids) == len(t1) + len(suffix) + 3
    assert s.finish_reason == "length" and s.loss_mask == [1] * len(t1) + [0] * len(suffix) + [1] * 3
    # max_model_len counts the prompt too
    engine = ScriptedEngine(tok, [[[TURN1]], [[TURN2]]])
    (s,), = run(tok, engine, [p], 1, max_model_len=len(p) + len(t1) + len(suffix) + 2)
    assert s.token_ids == t1 + suffix + t2[:2] and s.finish_reason == "length"
    # two rollouts with different budgets left continue in one call, each cut at its own
    short = call("mul", a=12, b=13) + EOS
    engine = ScriptedEngine(tok, [[[TURN1, short]], [[TURN2], [TURN2]]])
    budget = len(t1) + len(suffix) + 4
    a, b = run(tok, engine, [p], 2, max_tokens=budget)[0]
    assert engine.calls[1][2].max_tokens == budget - len(ids(tok, short)) - len(suffix)
    assert a.token_ids == t1 + suffix + t2[:4] and a.finish_reason == "length"
    assert b.token_ids == ids(tok, short) + suffix + t2 and b.finish_reason == "stop"


def test_a_turn_cut_by_length_runs_no_call_and_a_failed_reset_runs_single_turn(tok):
    p = prompt(tok, "q")
    engine = ScriptedEngine(tok, [[[TURN1]]])
    (s,), = run(tok, engine, [p], 1, max_tokens=len(ids(tok, TURN1)) - 1)  # cut before its <|im_end|>
    assert s.finish_reason == "length" and s.tool_stats["calls"] == 0 and len(engine.calls) == 1
    engine = ScriptedEngine(tok, [[[TURN1, TURN1]], [[TURN2]]])
    log = []
    a, b = run(tok, engine, [p], 2, errors={0: "reset raised: boom"}, log=log)[0]
    assert a.error == "reset raised: boom" and a.token_ids == ids(tok, TURN1) and a.tool_stats["calls"] == 0
    assert b.error is None and [r for r, _ in log[0]] == [1] and b.tool_stats["turns"] == 2


class SeededEngine:
    """Text as a function of (prefix, seed) only: a call to mul(seed % 89, 7), then, after a tool
    answer, an answer naming the seed. Without seeds, a counter (the batch decides)."""

    def __init__(self, tokenizer) -> None:
        self.tok, self.counter, self.seeds = tokenizer, 0, []

    def generate(self, prompts, n, sampling, seeds=None):
        self.seeds.append(seeds)
        out = []
        for i, p in enumerate(prompts):
            group = []
            for j in range(n):
                self.counter += 1
                s = seeds[i] + j if seeds is not None else self.counter
                answered = "<tool_response>" in self.tok.decode(p)
                text = f"It is {s % 1000}." + EOS if answered else call("mul", a=s % 89, b=7) + EOS
                t = self.tok(text, add_special_tokens=False)["input_ids"]
                group.append(Sample(t, text, [-0.5] * len(t), "stop"))
            out.append(group)
        return out

    def load_weights(self, named_tensors) -> None:
        pass

    def close(self) -> None:
        pass


def test_a_seeded_rollout_is_a_function_of_its_prompt_and_seed_not_of_its_batch(tok):
    p0, p1 = prompt(tok, "x"), prompt(tok, "y")
    whole = SeededEngine(tok)
    both = run(tok, whole, [p0, p1], 2, seeds=[11, 12345])
    alone = SeededEngine(tok)
    only = run(tok, alone, [p1], 2, seeds=[12345])
    assert only[0] == both[1]
    assert whole.seeds[1] == [turn_seed(11, 0, 1), turn_seed(11, 1, 1), turn_seed(12345, 0, 1), turn_seed(12345, 1, 1)]
    assert len(set(whole.seeds[1])) == 4  # each rollout and turn its own stream
    assert run(tok, SeededEngine(tok), [p0, p1], 2, seeds=[11, 12345]) == both  # and run to run
    assert isinstance(whole, RolloutEngine)


def test_a_tool_batch_survives_the_checkpoint_round_trip_exactly(tok):
    """rollout_state -> torch.save -> torch.load(weights_only) -> rollout_from_state keeps every field of
    multi-turn samples (a checkpoint holds the batch in flight)."""
    p = prompt(tok, "q")
    engine = ScriptedEngine(tok, [[[TURN1, "x" + EOS]], [[TURN2]]])
    samples = run(tok, engine, [p], 2, errors={1: "reset failed"})[0]
    ro = Rollout([p, p], samples, torch.tensor([1.0, float("nan")], dtype=torch.float64),
                 {"acc": torch.tensor([1.0, float("nan")])}, ["q", "q"], 2, {"m": 0.25})
    buf = io.BytesIO()
    torch.save(rollout_state(ro), buf)
    buf.seek(0)
    back = rollout_from_state(torch.load(buf, weights_only=True))
    assert back.samples == ro.samples and back.samples[0].loss_mask == ro.samples[0].loss_mask
    assert back.samples[0].messages[0]["tool_calls"][0]["function"]["arguments"] == {"a": 12, "b": 13}
    assert back.samples[1].error == "reset failed"


def test_bad_calls_are_refused(tok):
    p = prompt(tok, "q")
    with pytest.raises(ValueError, match="3 episode starts for 1 prompts x 2"):
        generate_with_tools(ScriptedEngine(tok, []), tok, [p], 2, SamplingConfig(), None, starts(3), run_calls,
                            None, 4096)
    with pytest.raises(ValueError, match="max_tool_calling_iterations"):
        run(tok, ScriptedEngine(tok, []), [p], 1, max_iterations=-1)


class FirstTurnScripted:
    """The first turn scripted (the tiny model does not call tools), every continuation the real
    transformers engine's: its ids and log-probs land after the inserted tool tokens."""

    def __init__(self, tokenizer, engine, text: str) -> None:
        self.tok, self.engine, self.text, self.n_calls = tokenizer, engine, text, 0

    def generate(self, prompts, n, sampling, seeds=None):
        self.n_calls += 1
        if self.n_calls > 1:
            return self.engine.generate(prompts, n, sampling, seeds)
        ids = self.tok(self.text, add_special_tokens=False)["input_ids"]
        return [[Sample(ids, self.text, [0.0] * len(ids), "stop") for _ in range(n)] for _ in prompts]

    def load_weights(self, named_tensors) -> None:
        pass

    def close(self) -> None:
        pass


def test_continuations_from_the_real_engine_score_as_the_trainer_scores_them(tiny_model):
    """After the tool suffix, the transformers engine continues each rollout: the sampler's log-probs
    of those model tokens are the trainer's log-prob pass over the whole exchange (positions and
    context right after the inserted tokens), and the inserted tokens are exactly the suffix."""
    from rlreason.data.batching import pack
    from rlreason.loop.logprobs import completion_logprobs
    from rlreason.rollout.hf import HFEngine

    model, tok = tiny_model
    tok.chat_template = TOOL_TEMPLATE
    p = prompt(tok, "12*13")
    engine = FirstTurnScripted(tok, HFEngine(model, tok), TURN1)
    torch.manual_seed(0)
    samples = generate_with_tools(engine, tok, [p], 3, SamplingConfig(max_tokens=len(ids(tok, TURN1)) + 60), [7],
                                  starts(3), run_calls, 1, 4096)[0]
    t1, suffix = ids(tok, TURN1), ids(tok, SUFFIX_156)
    for s in samples:
        assert s.token_ids[:len(t1) + len(suffix)] == t1 + suffix and len(s.token_ids) > len(t1) + len(suffix)
        assert s.loss_mask == [1] * len(t1) + [0] * len(suffix) + [1] * (len(s.token_ids) - len(t1) - len(suffix))
    assert len({tuple(s.token_ids) for s in samples}) > 1  # three seeded streams, not one
    batch = pack([p] * 3, [s.token_ids for s in samples], tok.pad_token_id)
    with torch.no_grad():
        logp, _ = completion_logprobs(model, batch, temperature=1.0)
    for i, s in enumerate(samples):
        cont = slice(len(t1) + len(suffix), len(s.token_ids))
        torch.testing.assert_close(logp[i, cont], torch.tensor(s.logprobs[cont]), atol=2e-4, rtol=1e-4)
