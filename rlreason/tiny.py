"""The embedded tiny model: a locally trained tokenizer, a small Qwen2, a short SFT warm-up.

Five specs ship: ``tiny`` (a dense Qwen2, ``TinySpec()``), ``tiny-moe`` (``TINY_MOE``, a
Qwen2-MoE with the same attention, tokenizer and warm-up data), ``tiny-small``
(``TINY_SMALL``, a narrower, shallower dense Qwen2 with the same tokenizer: the distillation
student), ``tiny-tools`` (``TINY_TOOLS``, the dense shape with its own tokenizer and a
tool-calling chat template, warmed up on 3-digit products by a teacher that calls a calculator some
of the time: the tool demo, docs/tools.md) and ``tiny-code`` (``TINY_CODE``, the dense shape with its
own tokenizer, warmed up on the code task by a teacher that writes the right function some of the
time: the code demo, docs/code.md); ``SPECS`` maps the names that ``model_name_or_path`` accepts to
them.

Nothing is downloaded. The build is deterministic for a spec (seeded data, seeded init,
one thread), cached under ``$RLREASON_CACHE`` (default ``~/.cache/rlreason``) in a folder
named by a hash of the spec, and reused. Rebuild with ``python -m rlreason.tiny --rebuild``.

The tokenizer is a byte-level BPE trained with exactly the pipeline that
``Qwen2Tokenizer`` imposes on load (NFC, Qwen's split regex, byte-level), so
``AutoTokenizer.from_pretrained`` gives the same ids as at build time. It has a ChatML
template, left padding, and distinct pad (``<|endoftext|>``) and eos (``<|im_end|>``).

The warm-up imitates traces from a sloppy teacher (see ``rlreason.data.tasks.arith``) on
the same problems RL trains on: the model learns the format and the method, and copies
the teacher's dropped carries, which RL then has to unlearn. ``tiny-tools``' warm-up imitates
multi-turn exchanges (``exchange_example``: loss on the model's turns, none on the tool's).
"""

from __future__ import annotations

import argparse
import dataclasses
import fcntl
import hashlib
import json
import math
import os
import random
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from rlreason.data.batching import right_pad
from rlreason.data.tasks import arith, code, mul
from rlreason.run.host import capped_threads

# Threads for the build: a fixed count keeps it reproducible; RLREASON_BUILD_THREADS sets another, and
# it is never more than the usable cores (rlreason/run/host.py). Two, with OpenMP's passive waiting (set on
# import, rlreason/__init__.py): on 2 cores shared with one busy loop, 2 spinning threads ran 100
# warm-up steps in 541 s (26 s alone); passive ones take 1.7x their time alone, and alone they are as
# fast as before (docs/benchmarks.md, benchmarks/busy_machine.py). The weights depend on the thread
# count, so it is part of the cache key.
BUILD_THREADS = 2
BUILD_VERSION = 1  # bump when the build procedure changes, so old caches are not reused
PAD, EOS, IM_START = "<|endoftext|>", "<|im_end|>", "<|im_start|>"
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# The tool-calling model's ChatML (``tiny-tools``). The model has 192 positions, so the tools are one
# short system line, ``tools: multiply(a, b)``, not Qwen's JSON schemas (about 100 tokens each here).
# Calls are Hermes/Qwen's ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` (the arguments
# as ``tojson`` writes them), results a ``tool`` turn. transformers passes ``tools`` as JSON schemas
# ({"type": "function", "function": {...}}), an assistant's ``tool_calls`` as
# [{"type": "function", "function": {"name", "arguments": dict | str}}], and tool messages as
# {"role": "tool", "name", "content"}.
TOOL_CALL_OPEN, TOOL_CALL_CLOSE = "<tool_call>", "</tool_call>"
TOOLS_CHATML_TEMPLATE = (
    "{%- set has_system = messages and messages[0]['role'] == 'system' -%}"
    "{%- if tools or has_system -%}"
    "{{- '<|im_start|>system\n' -}}"
    "{%- if has_system -%}{{- messages[0]['content'] -}}{%- if tools -%}{{- '\n' -}}{%- endif -%}{%- endif -%}"
    "{%- if tools -%}{{- 'tools: ' -}}"
    "{%- for tool in tools -%}{%- set f = tool['function'] if tool['function'] is defined else tool -%}"
    "{{- f['name'] + '(' + (f.get('parameters', {}).get('properties', {}) | list | join(', ')) + ')' -}}"
    "{%- if not loop.last -%}{{- '; ' -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{- '<|im_end|>\n' -}}"
    "{%- endif -%}"
    "{%- for message in messages -%}"
    "{%- if not (loop.first and has_system) -%}"
    "{{- '<|im_start|>' + message['role'] + '\n' -}}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}{%- endif -%}"
    "{%- if message['tool_calls'] is defined and message['tool_calls'] -%}"
    "{%- for call in message['tool_calls'] -%}"
    "{%- set fn = call['function'] if call['function'] is defined else call -%}"
    "{{- '<tool_call>{\"name\": \"' + fn['name'] + '\", \"arguments\": ' -}}"
    "{{- fn['arguments'] if fn['arguments'] is string else fn['arguments'] | tojson -}}"
    "{{- '}</tool_call>' -}}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{{- '<|im_end|>\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\n' -}}{%- endif -%}"
)
# transformers' ``parse_response`` reads an assistant turn of TOOLS_CHATML_TEMPLATE with this (saved
# with the tokenizer, tokenizer_config.json): TRL's Qwen3 response template without the reasoning field.
TOOLS_RESPONSE_TEMPLATE = {
    "defaults": {"role": "assistant"},
    "start_anchor": "<|im_start|>assistant\n",
    "fields": {
        "tool_calls": {"open": TOOL_CALL_OPEN, "close_pattern": r"</tool_call>\s*", "repeats": True,
                       "content": "json", "transform": {"type": "function", "function": "{content}"}},
        "content": {"close_pattern": r"<\|im_end\|>\s*", "content": "text"},
    },
}


@dataclass(frozen=True)
class TinySpec:
    """Everything that determines the built model; its hash names the cache folder."""

    name: str = "tiny"
    seed: int = 0
    vocab_size: int = 320
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4  # head_dim = hidden_size / num_heads = 32, the least vLLM's CPU backend takes
    num_kv_heads: int = 2
    intermediate_size: int = 384
    max_positions: int = 192
    difficulty: arith.Difficulty = field(default_factory=arith.Difficulty)
    slip_rate: float = 0.5
    sft_steps: int = 800
    sft_batch: int = 64
    sft_lr: float = 3e-3
    sft_warmup: int = 50
    # Mixture-of-experts variant (Qwen2-MoE: a shared expert plus top-k routed experts in every
    # layer). num_experts = 0 is the dense Qwen2; these fields then stay out of the cache key,
    # so the dense model's key (and cached build) is what it was before they existed.
    num_experts: int = 0
    num_experts_per_tok: int = 0
    moe_intermediate_size: int = 0
    shared_expert_intermediate_size: int = 0
    router_aux_loss_coef: float = 0.0  # the load-balancing loss's weight in the warm-up
    # The task the warm-up teaches: "arith" (the addition chains) or "mul" (rlreason.data.tasks.mul:
    # 3-digit products with a calculator tool, TOOLS_CHATML_TEMPLATE, a teacher that calls the tool with
    # probability p_tool). Like the MoE fields, these stay out of an arith model's cache key.
    task: str = "arith"
    p_tool: float = 0.0
    mul_difficulty: mul.MulDifficulty = field(default_factory=mul.MulDifficulty)
    # The code task (rlreason.data.tasks.code: a function from input/output examples, checked by running
    # it), taught by a teacher that writes the right program with probability p_right. These stay out of
    # the other specs' keys.
    p_right: float = 0.0
    code_difficulty: code.CodeDifficulty = field(default_factory=code.CodeDifficulty)

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"TinySpec task must be one of {TASKS}, got {self.task!r}")

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    @property
    def has_tools(self) -> bool:
        return self.task == "mul"

    @property
    def is_code(self) -> bool:
        return self.task == "code"

    def key(self) -> str:
        fields = dataclasses.asdict(self)
        dropped = set()
        if not self.is_moe:
            dropped |= set(MOE_FIELDS)
        if self.task == "arith":
            dropped |= set(TOOL_FIELDS)
        elif self.is_code:  # the task stays in the key; the tool task's own fields do not
            dropped |= set(TOOL_FIELDS) - {"task"}
        if not self.is_code:
            dropped |= set(CODE_FIELDS)
        for name in dropped:
            del fields[name]
        blob = json.dumps({"v": BUILD_VERSION, "threads": build_threads(), **fields}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


MOE_FIELDS = ("num_experts", "num_experts_per_tok", "moe_intermediate_size", "shared_expert_intermediate_size",
              "router_aux_loss_coef")
TOOL_FIELDS = ("task", "p_tool", "mul_difficulty")
CODE_FIELDS = ("p_right", "code_difficulty")
TASKS = ("arith", "mul", "code")

# The tiny MoE: 8 routed experts of width 96, top-2, plus a shared expert of width 192, so a
# token's active MLP width (192 + 2 x 96 = 384) equals the dense model's. Attention, vocabulary
# and task are the dense model's. The warm-up adds the Switch load-balancing loss at 0.01
# (Fedus et al. 2021's value) so that RL starts from a router that uses all experts.
TINY_MOE = TinySpec(name="tiny-moe", num_experts=8, num_experts_per_tok=2, moe_intermediate_size=96,
                    shared_expert_intermediate_size=192, router_aux_loss_coef=0.01)

# The distillation student (docs/distillation.md): the dense model's depth at half its width
# (0.27M parameters, a third of it), with the same tokenizer (the tokenizer depends only on the
# seed, the task and the vocabulary size, which it shares), so the dense model can teach it token
# by token. (Two layers of width 64 could not learn the task: 3% held-out after the warm-up.)
TINY_SMALL = TinySpec(name="tiny-small", hidden_size=64, num_layers=4, num_heads=2, num_kv_heads=1,
                      intermediate_size=256)

# The tool-calling model (docs/tools.md, recipes/configs/tiny_tools_cpu.yaml): the dense model's shape,
# warmed up on 3-digit products by a teacher that calls the calculator on p_tool of the problems and
# otherwise guesses in its head (rounding both factors), so RL has a behaviour to reinforce. The warm-up
# must teach the model to copy the factors into the call and the product into <answer>, which only the
# calling traces show: with p_tool 0.3 (or 0.3 at sft_lr 5e-3) 800 steps of 32 left it copying the
# second factor right 0.5-7.5% of the time (greedy), with 0.4 96.5%, and 82% of its sampled calls
# right (benchmarks/tools_warmup.py). vocab_size is an upper bound: the corpus yields 335 tokens, 337
# with the two tool-call markers.
TINY_TOOLS = TinySpec(name="tiny-tools", task="mul", p_tool=0.4, vocab_size=384, sft_steps=800, sft_batch=32)

# The code-writing model (docs/code.md, recipes/configs/tiny_code_cpu.yaml): the dense model's shape,
# warmed up on the code task (rlreason.data.tasks.code) by a teacher that writes the right program on
# p_right of the problems and otherwise a lookup table of the shown values or the line through the wrong
# intercept; RL on the sandbox's verdict alone has to teach it to generalise.
TINY_CODE = TinySpec(name="tiny-code", task="code", p_right=0.3, vocab_size=320, sft_steps=300, sft_batch=64)

# Names ``model_name_or_path`` accepts for the embedded models.
SPECS = {"tiny": TinySpec(), "tiny-moe": TINY_MOE, "tiny-small": TINY_SMALL, "tiny-tools": TINY_TOOLS,
         "tiny-code": TINY_CODE}


def build_threads() -> int:
    """The build's intra-op threads: RLREASON_BUILD_THREADS (default ``BUILD_THREADS``), never more
    than the cores this process may use."""
    return capped_threads(int(os.environ.get("RLREASON_BUILD_THREADS", BUILD_THREADS)))


def cache_root() -> Path:
    return Path(os.environ.get("RLREASON_CACHE", Path.home() / ".cache" / "rlreason"))


def build_tokenizer(corpus: list[str], vocab_size: int, tools: bool = False):
    """Train a byte-level BPE with Qwen2's pipeline and wrap it as a Qwen2Tokenizer. ``tools``: the
    tool-calling model's tokenizer: TOOLS_CHATML_TEMPLATE, ``<tool_call>`` and ``</tool_call>`` as
    added (not special: the text keeps them) tokens, as Qwen2.5 has them, and the response template."""
    from transformers import Qwen2Tokenizer
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX  # what Qwen2Tokenizer imposes

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, IM_START, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    state = json.loads(tok.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in state["merges"]]
    tokenizer = Qwen2Tokenizer(
        vocab=state["vocab"],
        merges=merges,
        unk_token=None,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=[IM_START],
        padding_side="left",
        chat_template=TOOLS_CHATML_TEMPLATE if tools else CHATML_TEMPLATE,
        model_max_length=1024,
    )
    if tools:
        # one token each, so calling or not is one sampled token (the first of the turn)
        tokenizer.add_tokens([TOOL_CALL_OPEN, TOOL_CALL_CLOSE])
        tokenizer.response_template = TOOLS_RESPONSE_TEMPLATE
    return tokenizer


def build_model(spec: TinySpec, tokenizer):
    from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen2MoeConfig, Qwen2MoeForCausalLM

    moe = {}
    if spec.is_moe:
        moe = dict(num_experts=spec.num_experts, num_experts_per_tok=spec.num_experts_per_tok,
                   moe_intermediate_size=spec.moe_intermediate_size,
                   shared_expert_intermediate_size=spec.shared_expert_intermediate_size,
                   norm_topk_prob=False,  # Qwen1.5-MoE's choice: routed weights are the raw softmax probabilities
                   decoder_sparse_step=1, output_router_logits=False, router_aux_loss_coef=spec.router_aux_loss_coef)
    config = (Qwen2MoeConfig if spec.is_moe else Qwen2Config)(
        **moe,
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads,
        head_dim=spec.hidden_size // spec.num_heads,
        max_position_embeddings=spec.max_positions,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.convert_tokens_to_ids(EOS),
        pad_token_id=tokenizer.pad_token_id,
        torch_dtype="float32",
    )
    torch.manual_seed(spec.seed)
    model = (Qwen2MoeForCausalLM if spec.is_moe else Qwen2ForCausalLM)(config)
    model.generation_config.eos_token_id = config.eos_token_id
    model.generation_config.pad_token_id = config.pad_token_id
    model.generation_config.bos_token_id = None
    return model


def prompt_text(tokenizer, question: str) -> str:
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
    )


def _sft_batch(tokenizer, pairs: list[tuple[str, str]]) -> dict[str, torch.Tensor]:
    """Right-padded input ids with labels on the completion (and its eos) only."""
    eos = tokenizer.convert_tokens_to_ids(EOS)
    rows, labels = [], []
    for prompt, completion in pairs:
        p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        c = tokenizer(completion, add_special_tokens=False)["input_ids"] + [eos]
        rows.append(p + c)
        labels.append([-100] * len(p) + c)
    ids, mask = right_pad(rows, tokenizer.pad_token_id)
    return {"input_ids": ids, "attention_mask": mask, "labels": right_pad(labels, -100)[0]}


def exchange_segments(tokenizer, prompt: list[dict], completion: list[dict], tools: list[dict] | None = None,
                      ) -> list[tuple[str, bool]]:
    """The texts a multi-turn rollout's context grows by, in order, and whether the model wrote each:
    the rendered prompt (False), each assistant turn's text up to and including its end-of-turn token
    (True: the model stops at eos), and what the chat template inserts after it (False: the rest of
    that turn's markup, the tool turns and the next assistant header). Their concatenation is the
    template's rendering of the whole exchange, less the markup after the last eos.

    Each piece is the template's own rendering (a prefix of the next one), so a warm-up trained on
    these pieces sees what a rollout that renders tool results with the template will feed the model."""
    def render(messages: list[dict], gen: bool) -> str:
        return tokenizer.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=gen)

    context = render(prompt, True)
    out = [(context, False)]
    for i, message in enumerate(completion):
        if message["role"] != "assistant":
            continue
        if i > 0:  # the tool turns before this assistant turn, up to its header
            full = render(prompt + completion[:i], True)
            if not full.startswith(context):
                raise ValueError("the chat template does not render the exchange as a growing prefix")
            out.append((full[len(context):], False))
            context = full
        with_turn = render(prompt + completion[:i + 1], False)
        end = with_turn.rfind(EOS)
        if not with_turn.startswith(context) or end < len(context):
            raise ValueError("the chat template does not end an assistant turn with the eos token")
        out.append((with_turn[len(context):end + len(EOS)], True))
        context = with_turn[:end + len(EOS)]
    return out


def exchange_example(tokenizer, prompt: list[dict], completion: list[dict], tools: list[dict] | None = None,
                     ) -> tuple[list[int], list[int]]:
    """(input ids, labels) of one multi-turn exchange: each segment of ``exchange_segments`` tokenized
    on its own, as a rollout appends it (the model's tokens as generated, the inserted ones as the
    template renders them); labels on the model's segments only, -100 on the prompt and tool turns."""
    ids: list[int] = []
    labels: list[int] = []
    for text, by_model in exchange_segments(tokenizer, prompt, completion, tools):
        seg = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids += seg
        labels += seg if by_model else [-100] * len(seg)
    return ids, labels


def render_tools_chat(messages: list[dict], tools: list[dict] | None) -> str:
    """``messages`` rendered by TOOLS_CHATML_TEMPLATE with no tokenizer (the tokenizer's corpus is made
    before the tokenizer), by the function ``apply_chat_template`` renders with."""
    from transformers.utils.chat_template_utils import render_jinja_template

    rendered, _ = render_jinja_template([messages], tools=tools, chat_template=TOOLS_CHATML_TEMPLATE)
    return rendered[0]


def tool_schemas() -> list[dict]:
    """The calculator's JSON schema, as ``apply_chat_template(tools=...)`` is given it."""
    from transformers.utils import get_json_schema

    return [get_json_schema(mul.multiply)]


def _tools_batch(tokenizer, spec: TinySpec, problems: list[mul.Problem], rng: random.Random,
                 tools: list[dict]) -> dict[str, torch.Tensor]:
    """A warm-up batch of teacher exchanges (``mul.teacher``), right-padded, labels on the assistant turns."""
    rows, labels = [], []
    for p in problems:
        ids, lab = exchange_example(tokenizer, mul.prompt(p), mul.teacher(p, spec.p_tool, rng), tools)
        rows.append(ids)
        labels.append(lab)
    ids, mask = right_pad(rows, tokenizer.pad_token_id)
    return {"input_ids": ids, "attention_mask": mask, "labels": right_pad(labels, -100)[0]}


def warmup(model, tokenizer, spec: TinySpec, log=print) -> list[float]:
    """Supervised fine-tuning on teacher traces: the sloppy adder's (arith), or the sometimes-calling
    multiplier's (mul, multi-turn, no loss on the tool turns). Returns the loss curve."""
    rng = random.Random(f"sft:{spec.seed}")
    n = spec.sft_steps * spec.sft_batch
    if spec.has_tools:
        problems = mul.generate(n, seed=spec.seed, split="train", difficulty=spec.mul_difficulty, unique=False)
        tools = tool_schemas()
    elif spec.is_code:
        problems = code.generate(n, seed=spec.seed, split_name="train", difficulty=spec.code_difficulty)
    else:
        problems = arith.generate(n, seed=spec.seed, split="train", difficulty=spec.difficulty, unique=False)
    opt = torch.optim.AdamW(model.parameters(), lr=spec.sft_lr, weight_decay=0.01, betas=(0.9, 0.98))

    def lr_at(step: int) -> float:  # linear warm-up then cosine to 10%
        if step < spec.sft_warmup:
            return (step + 1) / spec.sft_warmup
        t = (step - spec.sft_warmup) / max(1, spec.sft_steps - spec.sft_warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    model.train()
    losses = []
    t0 = time.time()
    for step in range(spec.sft_steps):
        chunk = problems[step * spec.sft_batch:(step + 1) * spec.sft_batch]
        if spec.has_tools:
            batch = _tools_batch(tokenizer, spec, chunk, rng, tools)
        elif spec.is_code:
            batch = _sft_batch(tokenizer, [(prompt_text(tokenizer, p.question), code.teacher(p, spec.p_right, rng))
                                           for p in chunk])
        else:
            pairs = [(prompt_text(tokenizer, p.question), arith.trace(p, spec.slip_rate, rng)[0]) for p in chunk]
            batch = _sft_batch(tokenizer, pairs)
        # an MoE model adds router_aux_loss_coef x its load-balancing loss to the loss itself
        extra = {"output_router_logits": True} if spec.is_moe else {}
        loss = model(**batch, **extra).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if (step + 1) % 100 == 0 or step + 1 == spec.sft_steps:
            recent = sum(losses[-100:]) / len(losses[-100:])
            log(f"warm-up step {step + 1}/{spec.sft_steps} loss {recent:.4f} ({time.time() - t0:.0f}s)")
    model.eval()
    return losses


def build_spec_tokenizer(spec: TinySpec):
    """The tokenizer of ``spec``'s model, trained on teacher traces of its task (deterministic: a seeded
    corpus of 4,000 problems drawn apart from the warm-up's)."""
    corpus_rng = random.Random(f"corpus:{spec.seed}")
    corpus = []
    if spec.has_tools:  # whole rendered exchanges, so the calls' JSON gets merges
        for p in mul.generate(4000, seed=spec.seed + 10_000, split="train", difficulty=spec.mul_difficulty,
                              unique=False):
            corpus.append(render_tools_chat(mul.prompt(p) + mul.teacher(p, spec.p_tool, corpus_rng), tool_schemas()))
    elif spec.is_code:
        for p in code.generate(4000, seed=spec.seed + 10_000, split_name="train", difficulty=spec.code_difficulty):
            corpus.append(f"{IM_START}user\n{p.question}{EOS}\n{IM_START}assistant\n")
            corpus.append(code.teacher(p, spec.p_right, corpus_rng))
    else:
        probs = arith.generate(4000, seed=spec.seed + 10_000, split="train", difficulty=spec.difficulty,
                               unique=False)
        for p in probs:
            corpus.append(f"{IM_START}user\n{p.question}{EOS}\n{IM_START}assistant\n")
            corpus.append(arith.trace(p, spec.slip_rate, corpus_rng)[0])
    return build_tokenizer(corpus, spec.vocab_size, tools=spec.has_tools)


def build(spec: TinySpec, out_dir: Path, log=print) -> None:
    """Build tokenizer + model + warm-up into ``out_dir`` (Hugging Face format)."""
    torch.manual_seed(spec.seed)
    tokenizer = build_spec_tokenizer(spec)
    model = build_model(spec, tokenizer)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"building tiny model {spec.name} ({n_params / 1e6:.2f}M params, vocab {len(tokenizer)}) -> {out_dir}")
    losses = warmup(model, tokenizer, spec, log=log)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    (out_dir / "rlreason_tiny.json").write_text(
        json.dumps({"spec": dataclasses.asdict(spec), "key": spec.key(), "build_version": BUILD_VERSION,
                    "params": n_params, "final_sft_loss": sum(losses[-50:]) / 50}, indent=2)
    )


def ensure(spec: TinySpec = TinySpec(), rebuild: bool = False, log=print) -> Path:
    """Path of the built model for ``spec``, building it first if it is not cached.

    The build writes to a temporary folder that is renamed into place, so an interrupted
    build never leaves a half-written model that a later run would trust.
    """
    root = cache_root() / "tiny"
    path = root / f"{spec.name}-{spec.key()}"
    if path.exists() and not rebuild:
        return path
    root.mkdir(parents=True, exist_ok=True)
    # One build per spec at a time: a second process asking for the model (a test while CI prebuilds it
    # in the background, the ranks of a multi-process run) waits for the first build and reuses it.
    with open(root / f".{path.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if path.exists() and not rebuild:
            return path
        _build_into(spec, root, path, log)
    return path


def _build_into(spec: TinySpec, root: Path, path: Path, log) -> None:
    """Build ``spec`` in a temporary folder under ``root``, then rename it to ``path``."""
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=".build-"))
    try:
        threads = torch.get_num_threads()
        # A fixed thread count keeps the build bit-for-bit reproducible on a machine
        torch.set_num_threads(build_threads())
        try:
            build(spec, tmp, log=log)
        finally:
            torch.set_num_threads(threads)
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Build (or rebuild) the embedded tiny model.")
    ap.add_argument("--rebuild", action="store_true", help="rebuild even if cached")
    ap.add_argument("--sft-steps", type=int, default=None)
    ap.add_argument("--model", choices=sorted(SPECS), default="tiny")
    args = ap.parse_args(argv)
    spec = SPECS[args.model]
    if args.sft_steps is not None:
        spec = dataclasses.replace(spec, sft_steps=args.sft_steps)
    print(ensure(spec, rebuild=args.rebuild))


if __name__ == "__main__":
    main()
