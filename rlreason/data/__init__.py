"""Datasets in, prompts out: loading, prompt rendering and preparation for the trainer.

``load_dataset_any`` accepts a local data file, a ``save_to_disk`` directory or a hub id
(defined in ``rlreason.rewards.dataset_io``, where the rewards' preflight check needs it too).
``prepare`` renames columns, checks the prompt and answer columns exist and every prompt is
usable (``check_prompts``; ``check_golds`` reads a gold column as a reward does), renders every
prompt into ``prompt_text`` (through the tokenizer's chat template when there is one),
tokenizes it into ``prompt_ids`` and drops prompts that are too long. Every other column
is kept, because reward functions receive the whole row.

``arith_dataset`` is the embedded arithmetic task (``rlreason.data.tasks.arith``) as a dataset,
``mul_dataset`` the embedded multiplication task with a calculator (``rlreason.data.tasks.mul``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import datasets

from rlreason.data.tasks import arith, mul
from rlreason.rewards.dataset_io import load_dataset_any as load_dataset_any  # its home is the lowest layer
from rlreason.rewards.runner import MESSAGES_COLUMN

logger = logging.getLogger("rlreason.data")


# Columns ``prepare`` adds; rewards get every other column.
INTERNAL_COLUMNS = ("prompt_text", "prompt_ids", MESSAGES_COLUMN)
# --------------------------------------------------------------------------- rows


def filter_rows(ds: datasets.Dataset, keep: dict[str, list[Any]]) -> datasets.Dataset:
    """Rows whose ``column`` value is one of ``keep[column]``, for every column given (e.g.
    ``{"level": ["Level 3", "Level 4", "Level 5"]}``). A missing column is an error naming it."""
    if not keep:
        return ds
    return ds.select(kept_rows(ds, keep))


def kept_rows(ds: datasets.Dataset, keep: dict[str, list[Any]]) -> list[int]:
    """The positions of the rows ``filter_rows(ds, keep)`` keeps, in order: every row without a
    filter. Start-up checks name a bad row by its position in the file, not in the filtered data."""
    if not keep:
        return list(range(len(ds)))
    missing = [c for c in keep if c not in ds.column_names]
    if missing:
        raise ValueError(f"config key 'dataset_filter': no column {missing[0]!r} in the dataset "
                         f"(columns: {', '.join(ds.column_names)})")
    allowed = {c: set(v) for c, v in keep.items()}
    out = [i for i, row in enumerate(ds.select_columns(list(keep)))
           if all(row[c] in vals for c, vals in allowed.items())]
    if not out:
        raise ValueError(f"config key 'dataset_filter': no row of the {len(ds)} matches {keep}")
    return out


# --------------------------------------------------------------------------- rendering


def _is_conversation(value: Any) -> bool:
    """Whether a prompt value is a list of chat messages (dicts with role and content)."""
    return (
        isinstance(value, list)
        and len(value) > 0
        and all(isinstance(m, dict) and "role" in m and "content" in m for m in value)
    )


def _with_system(messages: list[dict], system_prompt: str | None) -> list[dict]:
    """``messages`` with a system message first, unless there is none to add or one already."""
    if not system_prompt or any(m.get("role") == "system" for m in messages):
        return list(messages)
    return [{"role": "system", "content": system_prompt}, *messages]


def _has_chat_template(tokenizer: Any) -> bool:
    """Whether ``tokenizer`` can render chat messages (base models often have no template)."""
    return tokenizer is not None and bool(getattr(tokenizer, "chat_template", None))


def _fill_template(template: str, row: dict, prompt: Any) -> str:
    """``template`` formatted with the row's columns plus ``{prompt}``, with readable errors."""
    fields = {**row, "prompt": prompt}
    try:
        return template.format(**fields)
    except KeyError as e:
        missing = e.args[0] if e.args else "?"
        raise ValueError(
            f"prompt template placeholder {{{missing}}} has no matching column; available columns: {sorted(fields)}"
        ) from e
    except (IndexError, ValueError) as e:
        # Positional fields ("{}") or stray braces; literal braces must be doubled ("{{").
        raise ValueError(f"invalid prompt template {template!r}: {e} (write literal braces as {{{{ and }}}})") from e


def _apply_chat_template(tokenizer: Any, messages: list[dict], chat_template_kwargs: dict | None = None) -> str:
    """Render messages as the prompt the model continues: template text, not token ids;
    ``chat_template_kwargs`` are the template's extra variables (TRL's config key)."""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                         **(chat_template_kwargs or {}))


def render_prompt(
    row: dict,
    *,
    prompt_column: str,
    tokenizer: Any = None,
    use_chat_template: bool = True,
    template: str | None = None,
    system_prompt: str | None = None,
    chat_template_kwargs: dict | None = None,
) -> str | list[dict]:
    """Turn one dataset row into the prompt the policy sees.

    A conversational prompt (a list of ``{"role", "content"}`` messages) gets ``system_prompt``
    prepended unless it already has a system message. A plain prompt is first formatted with
    ``template`` (which sees every column, and the prompt column as ``{prompt}``) and then
    becomes the user message. With ``use_chat_template`` and a tokenizer that has a chat
    template, the messages are rendered to a string ending in the generation prompt.

    Returns:
        The prompt string; a conversational row that is not rendered through a chat template
        comes back as its list of messages.
    """
    if prompt_column not in row:
        raise ValueError(f"prompt column {prompt_column!r} not in row; available columns: {sorted(row)}")
    value = row[prompt_column]
    chat = use_chat_template and _has_chat_template(tokenizer)
    messages = prompt_messages(row, prompt_column=prompt_column, template=template, system_prompt=system_prompt)
    if chat:
        return _apply_chat_template(tokenizer, messages, chat_template_kwargs)
    if _is_conversation(value):
        return messages
    text = _fill_template(template, row, value) if template is not None else str(value)
    return f"{system_prompt}\n{text}" if system_prompt else text


def prompt_messages(row: dict, *, prompt_column: str, template: str | None = None,
                    system_prompt: str | None = None) -> list[dict]:
    """The chat messages a row's prompt becomes: a conversation with ``system_prompt`` first
    (unless it has a system message), or the templated text as the user message after it.
    What the chat template renders, and what rewards get as ``prompts`` (TRL's contract)."""
    value = row[prompt_column]
    if _is_conversation(value):
        if template is not None:
            raise ValueError("a prompt template cannot be applied to conversational (list of messages) prompts")
        return _with_system(value, system_prompt)
    text = _fill_template(template, row, value) if template is not None else str(value)
    return _with_system([{"role": "user", "content": text}], system_prompt)


# --------------------------------------------------------------------------- preparation


def rename_columns(dataset: datasets.Dataset, column_map: dict[str, str] | None) -> datasets.Dataset:
    """Apply ``column_map`` (source name -> target name), checking the sources exist."""
    mapping = {src: dst for src, dst in (column_map or {}).items() if src != dst}
    if not mapping:
        return dataset
    missing = [src for src in mapping if src not in dataset.column_names]
    if missing:
        raise ValueError(f"column_map renames {missing}, not in the dataset; its columns are {dataset.column_names}")
    # A target that already exists and is not itself renamed away would be two columns of one name.
    taken = [(src, dst) for src, dst in mapping.items() if dst in dataset.column_names and dst not in mapping]
    targets = list(mapping.values())
    twice = sorted({dst for dst in targets if targets.count(dst) > 1})
    if taken or twice:
        src, dst = taken[0] if taken else (None, twice[0])
        why = (f"column_map renames {src!r} to {dst!r}, but the dataset already has a column {dst!r}" if src
               else f"column_map renames several columns to {dst!r}")
        raise ValueError(f"{why}; its columns are {dataset.column_names}. Rename or drop one of them (e.g. also map "
                         f"{dst!r} to another name), or point the reward at the column (accuracy: gold_column)")
    return dataset.rename_columns(mapping)


# --------------------------------------------------------------------------- start-up checks

# What a model folder's tokenizer is saved as (transformers' save_pretrained writes the first two).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def check_tokenizer(tokenizer: Any, path: str, what: str) -> None:
    """Fail when ``tokenizer`` (of the model at ``path``) turns text into no tokens, the error
    starting with ``what`` (the config key or flag that named it): what transformers builds from a
    model folder without tokenizer files, whose every prompt is then empty."""
    if tokenizer("What is 1 + 1?", add_special_tokens=False)["input_ids"]:
        return
    folder = Path(path).expanduser()
    none = folder.is_dir() and not any((folder / name).exists() for name in TOKENIZER_FILES)
    why = f"the folder has no tokenizer ({', '.join(TOKENIZER_FILES)})" if none else "its tokenizer reads no tokens"
    raise ValueError(f"{what}: {why}, so every prompt would be empty; copy the tokenizer files of the model "
                     f"it was trained from into it")


SHOWN_ROWS = 5  # bad rows named in a start-up error, per kind of fault


def _values(dataset: datasets.Dataset, column: str, batch_size: int = 4096) -> Iterator[Any]:
    """The values of one column, read in batches (a large dataset's column never sits in memory whole)."""
    for batch in dataset.select_columns([column]).iter(batch_size=batch_size):
        yield from batch[column]


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _describe_bad(bad: dict[str, list[tuple[int, Any]]], rows: Sequence[int] | None) -> str:
    """``{kind: [(position, value), ...]}`` as "2 unparseable, at rows 3, 7 (e.g. '\\frac{'); 1 empty, at
    row 9; rows count from 0": rows numbered as in the file (``rows`` maps a position to its row
    there), the first few of each kind named."""
    parts = []
    for kind, found in bad.items():
        named = ", ".join(str(rows[i] if rows is not None else i) for i, _ in found[:SHOWN_ROWS])
        more = f" and {len(found) - SHOWN_ROWS} more" if len(found) > SHOWN_ROWS else ""
        example = found[0][1]
        shown = "" if _blank(example) else (f" (e.g. {example!r:.60})" if isinstance(example, str | int | float)
                                             else f" (e.g. a {type(example).__name__})")
        parts.append(f"{len(found)} {kind}, at row{'s' if len(found) > 1 else ''} {named}{more}{shown}")
    return "; ".join(parts) + "; rows count from 0"


def check_prompts(dataset: datasets.Dataset, prompt_column: str, *, source: str = "the dataset",
                  rows: Sequence[int] | None = None) -> None:
    """Fail when a prompt is missing (null), blank or neither text nor a list of chat messages,
    naming ``source`` (e.g. "data file 'x.jsonl'") and the rows (``rows``: each position's row in
    the file). Otherwise a null prompt is trained on as the text "None", and an empty one stops
    the run at the step that draws it, at every resume."""
    bad: dict[str, list[tuple[int, Any]]] = {}
    for i, value in enumerate(_values(dataset, prompt_column)):
        if value is None:
            kind = "null"
        elif isinstance(value, str | list) and not (value.strip() if isinstance(value, str) else value):
            kind = "empty"
        elif isinstance(value, str) or _is_conversation(value):
            continue
        else:
            kind = "neither text nor a list of chat messages"
        bad.setdefault(kind, []).append((i, value))
    if bad:
        count = sum(map(len, bad.values()))
        raise ValueError(f"prompt column {prompt_column!r} of {source}: {count} of {len(dataset)} prompts cannot be "
                         f"used ({_describe_bad(bad, rows)}); every prompt needs text: fix or remove those rows")


def check_golds(dataset: datasets.Dataset, column: str, parse: Callable[[Any], Any] | None = None, *,
                source: str = "the dataset", rows: Sequence[int] | None = None, max_bad: float | None = None,
                reward: str = "the reward", sample: int = 200) -> None:
    """Fail when the gold column would leave ``reward`` without signal. ``parse`` is the reward's
    own reading of a gold (gold -> parsed value, or None when it cannot read it).

    ``max_bad`` None (a reward of the user's, which may read its golds otherwise): only a column
    where nothing can be read fails: every value missing (None or blank) or, with ``parse``,
    none of the first ``sample`` present ones parses. ``max_bad`` a fraction (the built-in
    accuracy reward, with ``parse`` its gold parser): every row is read; more than ``max_bad``
    of them blank, unparseable or neither text nor a number fails, naming ``source``, the
    kinds of fault, how many and the first rows of each (``rows``: each position's row in the
    file); fewer is a warning naming them. Those rows score None: no signal, never a wrong one.
    """
    if column not in dataset.column_names:
        return
    if max_bad is None:
        present = [g for g in _values(dataset, column) if not _blank(g)]
        if not present:
            raise ValueError(f"gold column {column!r} of {source}: all {len(dataset)} rows are empty, so {reward} "
                             f"would score every completion None; fill it, or point column_map at the gold column")
        if parse is not None and not any(parse(g) is not None for g in present[:sample]):
            raise ValueError(f"gold column {column!r} of {source}: none of the first {min(sample, len(present))} golds "
                             f"can be parsed (e.g. {present[0]!r}); check that it holds the answers (column_map), or "
                             f"check with `python -m rlreason.rewards check`")
        return
    bad = _bad_golds(_values(dataset, column), parse)
    count, n = sum(map(len, bad.values())), len(dataset)
    if not count:
        return
    what = (f"gold column {column!r} of {source}: {reward} cannot read {count} of {n} golds "
            f"({_describe_bad(bad, rows)}): those rows would score None, no training signal")
    if count == n:
        raise ValueError(f"{what}. Check that the column holds the answers (column_map, or the reward's "
                         f"gold_column), or check with `python -m rlreason.rewards check`")
    if count > max_bad * n:
        raise ValueError(f"{what}; that is {count / n:.1%} of the rows, more than config key 'max_bad_gold_fraction' "
                         f"({max_bad:.1%}) allows: fix or drop those rows, or raise max_bad_gold_fraction")
    logger.warning("%s; max_bad_gold_fraction (%.1f%% of the rows) allows that many, so the run goes on",
                   what, 100 * max_bad)


def _bad_golds(values: Iterable[Any], parse: Callable[[Any], Any] | None) -> dict[str, list[tuple[int, Any]]]:
    """{kind of fault: [(position, value), ...]} over every gold; each distinct gold is parsed once."""
    bad: dict[str, list[tuple[int, Any]]] = {}
    parsed: dict[tuple[type, Any], bool] = {}
    for i, gold in enumerate(values):
        if _blank(gold):
            kind = "empty"
        elif isinstance(gold, bool) or not isinstance(gold, str | int | float | Fraction):
            kind = "neither text nor a number"
        elif parse is None:
            continue
        else:
            key = (type(gold), gold)
            if key not in parsed:
                parsed[key] = parse(gold) is not None
            if parsed[key]:
                continue
            kind = "unparseable"
        bad.setdefault(kind, []).append((i, gold))
    return bad


def _require_column(dataset: datasets.Dataset, column: str, role: str) -> None:
    """Fail early, with the actual columns and the fix, when a needed column is absent."""
    if column not in dataset.column_names:
        raise ValueError(
            f"{role} column {column!r} not found; the dataset's columns are {dataset.column_names}. "
            f"Pass column_map={{'<your column>': {column!r}}} to rename one, or set {role}_column."
        )


def _drop_long(dataset: datasets.Dataset, max_prompt_length: int) -> datasets.Dataset:
    """Drop rows whose ``prompt_ids`` exceed ``max_prompt_length``, logging how many went."""
    kept = dataset.filter(lambda ids: len(ids) <= max_prompt_length, input_columns="prompt_ids")
    dropped = len(dataset) - len(kept)
    if dropped:
        logger.warning(
            "dropped %d of %d prompts longer than max_prompt_length=%d tokens",
            dropped,
            len(dataset),
            max_prompt_length,
        )
    if len(dataset) and not len(kept):
        # An empty dataset would fail much later and less clearly inside the trainer.
        raise ValueError(f"all {len(dataset)} prompts are longer than max_prompt_length={max_prompt_length} tokens")
    return kept


def chat_format(use_chat_template: bool | None, conversational: bool, system_prompt: str | None) -> bool:
    """Whether a dataset's prompts go through the chat template (before checking that the
    tokenizer has one), as TRL decides: ``use_chat_template`` None = by the prompt's form, a list
    of messages is conversational, a string is standard (plain text) unless ``system_prompt`` is
    set, which makes it conversational (a system and a user message, as open-r1 builds them);
    True = string prompts too; False = never."""
    if use_chat_template is None:
        return conversational or bool(system_prompt)
    return use_chat_template


def embedded_chat(use_chat_template: bool | None, embedded: bool) -> bool | None:
    """The config's ``use_chat_template`` for ``prepare``: the embedded arith task's string prompts
    are chat prompts (True) when the key is unset, as they always were; any other dataset's
    prompts are as TRL reads them (None: ``chat_format``)."""
    return True if use_chat_template is None and embedded else use_chat_template


def prepare(
    dataset: datasets.Dataset,
    *,
    prompt_column: str = "prompt",
    answer_column: str | None = None,
    column_map: dict[str, str] | None = None,
    tokenizer: Any = None,
    use_chat_template: bool | None = True,
    template: str | None = None,
    system_prompt: str | None = None,
    max_prompt_length: int | None = None,
    source: str = "the dataset",
    rows: Sequence[int] | None = None,
    chat_template_kwargs: dict | None = None,
) -> datasets.Dataset:
    """Make ``dataset`` ready for the trainer.

    Renames columns per ``column_map``, checks ``prompt_column`` (and ``answer_column``, when
    given: only rewards that read a gold column need one, and they name it at start-up) exist
    and every prompt is usable (``check_prompts``: an error names ``source`` and the rows, by
    ``rows``, each position's row in the file),
    adds ``prompt_text`` (see ``render_prompt``), with a chat template the messages it rendered
    (``prompt_messages``, what rewards get as ``prompts``) and, with a tokenizer, ``prompt_ids``. With
    ``max_prompt_length`` (in tokens, so a tokenizer is needed) longer prompts are dropped.
    All original columns are kept. ``use_chat_template``: True (the default here) renders string
    prompts through the chat template as a user message; None decides as TRL does
    (``chat_format``: conversational prompts only, or any with ``system_prompt``); False never.
    """
    if max_prompt_length is not None:
        if tokenizer is None:
            raise ValueError("max_prompt_length counts tokens, so prepare() needs a tokenizer")
        if max_prompt_length < 1:
            raise ValueError(f"max_prompt_length must be >= 1, got {max_prompt_length}")
    dataset = rename_columns(dataset, column_map)
    _require_column(dataset, prompt_column, "prompt")
    if answer_column is not None:
        _require_column(dataset, answer_column, "answer")
    check_prompts(dataset, prompt_column, source=source, rows=rows)
    # Arrow columns have one type, so the first row stands for all of them.
    conversational = bool(len(dataset)) and _is_conversation(dataset[0][prompt_column])
    wants_chat = chat_format(use_chat_template, conversational, system_prompt)
    chat = wants_chat and _has_chat_template(tokenizer)
    if wants_chat and tokenizer is not None and not chat:
        logger.info("tokenizer has no chat template; prompts are used as raw text")
    if not chat and conversational:
        # The trainer needs a string to generate from; only a chat template can flatten messages.
        raise ValueError(f"conversational prompts (column {prompt_column!r} holds lists of messages) need a "
                         f"tokenizer with a chat template, and config key 'use_chat_template' not false")

    def add_prompt(row: dict) -> dict:
        text = render_prompt(
            row,
            prompt_column=prompt_column,
            tokenizer=tokenizer,
            use_chat_template=chat,
            template=template,
            system_prompt=system_prompt,
            chat_template_kwargs=chat_template_kwargs,
        )
        out: dict[str, Any] = {"prompt_text": text}
        if chat:  # rewards get the messages, as TRL passes a conversational prompt
            out[MESSAGES_COLUMN] = prompt_messages(row, prompt_column=prompt_column, template=template,
                                                   system_prompt=system_prompt)
        if tokenizer is not None:
            # The chat template already inserted any special tokens; adding more would double them.
            out["prompt_ids"] = tokenizer(text, add_special_tokens=False)["input_ids"]
        return out

    dataset = dataset.map(add_prompt, desc="rendering prompts")
    if max_prompt_length is not None:
        dataset = _drop_long(dataset, max_prompt_length)
    return dataset


# --------------------------------------------------------------------------- embedded task


def arith_dataset(n: int, seed: int, split: str, difficulty: arith.Difficulty | None = None) -> datasets.Dataset:
    """``n`` arithmetic problems of ``split`` as a dataset with ``prompt`` and ``answer`` columns."""
    problems = arith.generate(n, seed, split, difficulty if difficulty is not None else arith.Difficulty())
    records = arith.to_records(problems)
    # from_dict with explicit columns keeps the schema even when n == 0.
    return datasets.Dataset.from_dict(
        {"prompt": [r["prompt"] for r in records], "answer": [r["answer"] for r in records]},
        features=datasets.Features({"prompt": datasets.Value("string"), "answer": datasets.Value("string")}),
    )


# Seed of the multiplication task's held-out problems, fixed (as the arith suite's), so that every run
# and the evaluation CLI score the same problems whatever the training seed.
MUL_EVAL_SEED = 1234


def mul_dataset(n: int, seed: int, split: str, difficulty: mul.MulDifficulty | None = None) -> datasets.Dataset:
    """``n`` multiplication problems of ``split`` as a dataset: conversational ``prompt`` (one user
    message) and ``answer`` columns."""
    records = mul.to_records(mul.generate(n, seed, split, difficulty or mul.MulDifficulty()))
    message = {"role": datasets.Value("string"), "content": datasets.Value("string")}
    return datasets.Dataset.from_dict(
        {"prompt": [r["prompt"] for r in records], "answer": [r["answer"] for r in records]},
        features=datasets.Features({"prompt": [message], "answer": datasets.Value("string")}),
    )
