"""Load a dataset from a local data file, a ``save_to_disk`` directory or a hub id.

Here, in the rewards package (the lowest layer), because the preflight check
(``python -m rlreason.rewards check``) loads datasets as the trainer does; ``rlreason.data``
imports ``load_dataset_any`` from here. Only ``datasets`` is needed, nothing of rlreason.
"""

from __future__ import annotations

import codecs
import json
import os
from pathlib import Path

import datasets
from datasets.exceptions import DatasetGenerationError

# File extension -> `datasets` packaged builder that reads it.
FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}

# Markers `save_to_disk` writes: a Dataset writes state.json, a DatasetDict dataset_dict.json.
_SAVED_MARKERS = ("state.json", "dataset_dict.json")


def _looks_like_path(source: str) -> bool:
    """Whether ``source`` is meant as a local path rather than a hub id.

    Hub ids are ``name`` or ``owner/name``, so a single ``/`` is not enough to call
    something a path; a known extension, an explicit prefix, a backslash or a second
    separator is.
    """
    if Path(source).suffix.lower() in FILE_BUILDERS:
        return True
    if source.startswith(("/", "./", "../", "~", ".\\", "..\\")) or os.path.isabs(source):
        return True
    return "\\" in source or source.count("/") >= 2


def _load_file(path: Path, split: str) -> datasets.Dataset:
    """Load one local data file with the packaged builder for its extension.

    A single file holds only the ``train`` split; ``split`` is passed on so that slices
    such as ``train[:100]`` work.
    """
    builder = FILE_BUILDERS.get(path.suffix.lower())
    if builder is None:
        raise ValueError(f"unsupported data file {str(path)!r}: expected one of {sorted(FILE_BUILDERS)}")
    if path.stat().st_size == 0:  # `datasets` raises a bare StopIteration on it
        raise ValueError(f"data file {str(path)!r} is empty")
    if builder != "parquet":
        _check_utf8(path)  # else a JSON file loads and its text fails when read; a CSV fails naming no line
    try:
        loaded = datasets.load_dataset(builder, data_files=str(path), split=split)
    except (StopIteration, ValueError) as e:  # a header-only CSV: 'Instruction "train" corresponds to no data!'
        raise ValueError(f"data file {str(path)!r} has no rows, or cannot be read as {builder} ({e!r})") from e
    except DatasetGenerationError as e:  # a malformed line
        cause = e.__cause__ or e
        where = _bad_json_line(path) if path.suffix.lower() == ".jsonl" else ""
        raise ValueError(f"data file {str(path)!r} cannot be read as {builder}{where}: "
                         f"{type(cause).__name__}: {cause}") from e
    if len(loaded) == 0:
        raise ValueError(f"data file {str(path)!r} has no rows")
    return loaded


def _check_utf8(path: Path) -> None:
    """Raise ValueError naming the file and the first line that is not UTF-8 text."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    with path.open("rb") as f:
        try:
            while chunk := f.read(1 << 20):
                decoder.decode(chunk)
            decoder.decode(b"", final=True)
            return
        except UnicodeDecodeError:
            pass
    with path.open("rb") as f:  # only for a bad file: find the line
        for number, line in enumerate(f, 1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"data file {str(path)!r}, line {number}: byte 0x{line[e.start]:02x} is not UTF-8 "
                                 f"text; convert the file to UTF-8 (e.g. iconv -f latin1 -t utf-8)") from None
    raise ValueError(f"data file {str(path)!r} ends inside a UTF-8 character (truncated?)")


def _bad_json_line(path: Path) -> str:
    """", line N" for the first line of a JSON Lines file that is not one JSON value, else ""."""
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                try:
                    json.loads(line)
                except json.JSONDecodeError:
                    return f", line {number}"
    return ""


def _load_saved(path: Path, split: str) -> datasets.Dataset:
    """Load a ``save_to_disk`` directory; for a DatasetDict pick ``split``."""
    loaded = datasets.load_from_disk(str(path))
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise ValueError(f"split {split!r} not in {str(path)!r}; available splits: {sorted(loaded)}")
        return loaded[split]
    return loaded


def _load_hub(source: str, split: str, data_files: str | None, name: str | None = None) -> datasets.Dataset:
    """``datasets.load_dataset`` on a hub id (or local data folder), with a clear error on failure."""
    try:
        return datasets.load_dataset(source, name, split=split, data_files=data_files)
    except Exception as e:  # the hub raises many types (HTTP, connection, not found); all mean "can't load"
        raise ValueError(
            f"could not load dataset {source!r} (split={split!r}) with datasets.load_dataset: {e}. "
            "It is not a local file or directory; hub downloads may be unavailable offline "
            "-- pass a local .json/.jsonl/.parquet/.csv file or a save_to_disk directory instead."
        ) from e


def load_dataset_any(source: str, split: str = "train", data_files: str | None = None,
                     name: str | None = None) -> datasets.Dataset:
    """Load a dataset from a local file, a ``save_to_disk`` directory or the hub.

    Args:
        source: a path to a ``.json``/``.jsonl``/``.parquet``/``.csv`` file, a directory
            written by ``save_to_disk``, or a hub id such as ``openai/gsm8k``.
        split: the split to return (``train`` is the only split of a single file).
        data_files: passed to ``datasets.load_dataset`` for hub ids and plain data folders.
        name: the hub dataset's configuration (subset), e.g. ``main`` for ``openai/gsm8k``.

    Raises:
        FileNotFoundError: ``source`` looks like a local path and does not exist.
        ValueError: the hub load failed, or the file type / split is not available.
    """
    path = Path(source).expanduser()
    if path.is_file():
        if data_files is not None:
            raise ValueError(f"data_files={data_files!r} does not apply to the single file {source!r}")
        return _load_file(path, split)
    if path.is_dir():
        if any((path / marker).exists() for marker in _SAVED_MARKERS):
            return _load_saved(path, split)
        # A folder of data files (e.g. a cloned hub repo): `datasets` infers the builder itself.
        return _load_hub(str(path), split, data_files, name)
    if _looks_like_path(source):
        raise FileNotFoundError(f"dataset path not found: {source!r}")
    return _load_hub(source, split, data_files, name)
