"""Checkpoints written atomically: a crash mid-write never leaves a corrupt checkpoint.

A checkpoint is ``accelerate``'s ``save_state`` (model weights as safetensors, optimizer,
scheduler, the python/numpy/torch RNG states of every rank) plus the state of every other stateful
part of the run (:class:`Stateful`: step, data position, counters, the last eval, config in
``trainer_state.json``; the batch in flight in a file of its own), written to a temporary folder that is
renamed into place only when complete. ``resume_from_checkpoint: auto`` picks the newest
complete one, so a kill at any moment resumes from the last finished checkpoint.

The last file written is ``manifest.json``: the size and SHA-256 of every other file. A resume
verifies it, so a checkpoint damaged later (a truncated or overwritten file, flipped bits, a
deleted ``trainer_state.json``) is an error naming the file, and ``auto`` falls back to the
newest intact checkpoint with a warning. Hashing reads the checkpoint once more at each save and
resume (SHA-256: 0.8 GB/s on one core here, ``hashlib.file_digest`` on a 256 MB file; by that rate
about 2 minutes for a 7B model with its AdamW state); the recipe and the trainer share one
verification per process.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import pickle
import re
import resource
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

CKPT_RE = re.compile(r"^step-(\d+)$")
MANIFEST = "manifest.json"
logger = logging.getLogger("rlreason.run.checkpoint")


class CorruptCheckpointError(ValueError):
    """A checkpoint whose files do not match its manifest (or that has none); names the file."""


class DiskFullError(OSError):
    """A checkpoint or the final model could not be written for want of space (ENOSPC, a quota) or
    because a file reached the size limit (EFBIG, ``ulimit -f``). What was half written is removed;
    the message names the folder and what is intact."""

    def __str__(self) -> str:
        return self.strerror or super().__str__()


# Left on a filesystem after a write failed on it, when the disk is full: a failed write fills what is left.
FULL_BELOW = 1 << 20
# accelerate warns on every save that tied weights (lm_head = embed_tokens) were de-duplicated;
# that is how safetensors stores tied weights, and the reload is tested, so keep the log clean.
logging.getLogger("accelerate.utils.other").setLevel(logging.ERROR)


def checkpoint_dirs(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints under ``output_dir/checkpoints``, oldest first."""
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := CKPT_RE.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


FINAL_EVAL = "final_eval.json"  # the final evaluation, added to the last checkpoint after it


def read_state(ckpt: str | Path) -> dict[str, Any]:
    path = Path(ckpt) / "trainer_state.json"
    if not path.is_file():
        raise FileNotFoundError(f"{ckpt} is not a complete rlreason checkpoint (no trainer_state.json)")
    state = json.loads(path.read_text())
    final = Path(ckpt) / FINAL_EVAL
    if final.is_file():
        with contextlib.suppress(ValueError):
            state["metrics"] = json.loads(final.read_text())
    return state


class Stateful(Protocol):
    """A part of the run whose state a checkpoint holds, besides what accelerate's ``save_state``
    holds (weights, optimizer, scheduler, random-number generators): ``state_dict()`` gives it,
    ``load_state_dict(state)`` puts it back. The trainer declares its parts once, name -> part
    (``GRPOTrainer._checkpointed``); saving and resuming iterate over them (:func:`parts_state`,
    :func:`load_parts`).

    Where a part's state goes:

    - by default, to the top level of ``trainer_state.json``: JSON values, under keys no other part
      writes, so the file reads as it did when the fields were listed by hand and older checkpoints
      resume. ``load_state_dict`` receives the whole file (every part's keys) and reads its own, with
      the value a checkpoint written before a key existed stands for.
    - a part with a ``checkpoint_file`` attribute: that file of its own (tensors and plain data,
      ``torch.save``; loaded with ``weights_only``, :func:`load_file`). ``state_dict()`` None writes
      no file, and ``load_state_dict`` is called only when the checkpoint has one.
    """

    def state_dict(self) -> dict[str, Any] | None: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def parts_state(parts: Mapping[str, Stateful | None]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Every part's ``state_dict`` (None: a part this run does not have), as a checkpoint stores them:
    -> (``trainer_state.json``'s entries, in the parts' order; {file name: what goes in it}). Call it
    on every process: a part's ``state_dict`` may be collective (the batch in flight is gathered)."""
    state: dict[str, Any] = {}
    files: dict[str, Any] = {}
    owner: dict[str, str] = {}
    for name, part in parts.items():
        if part is None:
            continue
        entries = part.state_dict()
        file = getattr(part, "checkpoint_file", None)
        if file is not None:
            if entries is not None:
                files[file] = entries
            continue
        for key in entries:
            if key in owner:  # one would overwrite the other, and a resume would give both the same value
                raise ValueError(f"checkpointed parts {owner[key]!r} and {name!r} both write {key!r} to "
                                 f"trainer_state.json")
            owner[key] = name
        state.update(entries)
    return state, files


def load_parts(ckpt: str | Path, parts: Mapping[str, Stateful | None]) -> dict[str, Any]:
    """Put every part's state back from checkpoint ``ckpt`` (the inverse of :func:`parts_state` with
    ``save_checkpoint``): -> ``trainer_state.json`` as read (``read_state``)."""
    ckpt = Path(ckpt)
    state = read_state(ckpt)
    for part in parts.values():
        if part is None:
            continue
        file = getattr(part, "checkpoint_file", None)
        if file is None:
            part.load_state_dict(state)
        elif (ckpt / file).is_file():
            try:
                part.load_state_dict(load_file(ckpt / file))
            except Exception as e:
                e.add_note(f"loading {ckpt / file}")
                raise
    return state


def load_file(path: Path) -> Any:
    """A part's own checkpoint file. It holds tensors and plain data only (``Stateful``), so it is
    loaded as such (``weights_only``): a file that carries anything else, whatever its checksum says,
    is refused before any of it runs."""
    import torch

    try:
        return torch.load(path, weights_only=True)
    except pickle.UnpicklingError as e:
        lines = [line.strip() for line in str(e).splitlines() if line.strip()] or [type(e).__name__]
        reason = next((line for line in lines if "GLOBAL" in line or "nsupported" in line), lines[-1])
        raise CorruptCheckpointError(
            f"{path} holds objects other than tensors and plain data, which loading could run as code: "
            f"refused ({reason}). rlreason never writes such a file: resume from a checkpoint you trust") from e


def _to_keep(ckpts: list[Path], keep: int | None, best: Path | None) -> set[Path]:
    """The newest ``keep`` checkpoints (None or 0: all, TRL's save_total_limit), plus the best one (by
    the eval metric) if there is one."""
    kept = set(ckpts[-keep:]) if keep else set(ckpts)
    if best is not None:
        kept.add(best)
    return kept


def _saved_metric(ckpt: Path, metric: str) -> Any:
    try:
        return read_state(ckpt).get("metrics", {}).get(metric)
    except (OSError, ValueError):  # a damaged checkpoint is never the best one
        return None


def best_checkpoint(ckpts: list[Path], metric: str | None, greater_is_better: bool = True) -> Path | None:
    """The checkpoint whose saved ``metrics[metric]`` is best (None without a metric or values)."""
    if not metric:
        return None
    scored = [(_saved_metric(c, metric), c) for c in ckpts]
    scored = [(v, c) for v, c in scored if isinstance(v, int | float)]
    if not scored:
        return None
    pick = max if greater_is_better else min
    return pick(scored, key=lambda vc: vc[0])[1]


def rng_states() -> dict[str, Any]:
    """Every random-number generator a checkpoint saves (accelerate's ``save_state``: python, numpy,
    torch, CUDA), as they are now. A step abandoned by a stop signal puts them back
    (:func:`set_rng_states`) before checkpointing the step before it, so the checkpoint is the one
    that step's end would have written."""
    import random

    import numpy as np
    import torch

    states = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    import random

    import numpy as np
    import torch

    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states:
        torch.cuda.set_rng_state_all(states["cuda"])


def save_checkpoint(accelerator, output_dir: str | Path, step: int, state: dict[str, Any], keep: int,
                    best_metric: str | None = None, greater_is_better: bool = True,
                    extra: Callable[[Path], None] | None = None, files: dict[str, Any] | None = None) -> Path:
    """Save a full training state for ``step``: ``state`` in ``trainer_state.json`` and ``files``
    (name -> tensors and plain data, ``torch.save``d), as :func:`parts_state` gives them; keep the
    newest ``keep`` checkpoints (and the best by ``state["metrics"][best_metric]`` when a metric is
    named). ``extra(folder)`` writes more files into the checkpoint on the main process, before it is
    made visible. A full disk is a ``DiskFullError`` naming the folder; the half-written one is
    removed, the others untouched."""
    root = Path(output_dir) / "checkpoints"
    final = root / f"step-{step:07d}"
    tmp = root / f".tmp-step-{step:07d}"
    ckpts = checkpoint_dirs(output_dir)
    intact = (f"the previous checkpoint, {ckpts[-1]}, is intact: free space, then resume with "
              f"--resume_from_checkpoint auto" if ckpts else "no checkpoint was written before this one")
    with _written_or_removed(tmp, f"checkpoint {final.name}", intact):
        if accelerator.is_main_process:
            root.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(tmp), safe_serialization=True)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            if extra is not None:
                extra(tmp)
            if files:
                import torch

                for name, content in files.items():
                    torch.save(content, tmp / name)
            (tmp / "trainer_state.json").write_text(json.dumps({"step": step, **state}, indent=2))
            write_manifest(tmp)  # last: a checkpoint without one was not finished
    if accelerator.is_main_process:
        _move_into_place(tmp, final)
        _rotate(output_dir, keep, best_metric, greater_is_better)
    accelerator.wait_for_everyone()
    return final


def _move_into_place(tmp: Path, final: Path) -> None:
    """Rename the complete folder ``tmp`` to ``final``: atomic on one filesystem, so it appears
    complete or not at all. A ``final`` already there (the same step again: a resumed run's end)
    is replaced with never a moment without one."""
    old = final.with_name(f".old-{final.name}")
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def _written_or_removed(tmp: Path, what: str, intact: str) -> Iterator[None]:
    """Write ``what`` into the folder ``tmp``: if that fails, ``tmp`` is removed (nothing half written
    stays) and a full disk is a ``DiskFullError`` naming the folder, then ``intact`` (what is left)."""
    try:
        yield
    except BaseException as e:
        full = _disk_full(e, tmp) if isinstance(e, Exception) else None
        shutil.rmtree(tmp, ignore_errors=True)
        if full is None:
            raise
        code, reason = full
        raise DiskFullError(code, f"disk full: {what} could not be written to {tmp} ({reason}); the half-written "
                                  f"folder is removed; {intact}", str(tmp)) from e


def _disk_full(exc: BaseException, folder: Path) -> tuple[int, str] | None:
    """(errno, why) when writing into ``folder`` failed for want of space; None for any other failure.
    torch reports a full disk in its own words ("basic_ios::clear: iostream error", "unexpected pos
    1495168 vs 1495060"), without an errno, so the filesystem is asked too (before the half-written
    files are removed): nearly no space left, or a file of the folder at the file-size limit.
    safetensors names the errno in its text ("I/O error: No space left on device (os error 28)")."""
    e: BaseException | None = exc
    for _ in range(10):  # the errno of an OSError in the chain of causes, or in a Rust error's text (safetensors)
        if e is None:
            break
        code = e.errno if isinstance(e, OSError) else next(
            (int(n) for n in re.findall(r"\(os error (\d+)\)", str(e))), None)
        if code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            return code, os.strerror(code)
        e = e.__cause__ or e.__context__
    where = next((p for p in (folder, *folder.parents) if p.exists()), None)
    with contextlib.suppress(OSError):
        st = os.statvfs(where)
        free = st.f_bavail * st.f_frsize
        if free < FULL_BELOW:
            return errno.ENOSPC, f"{os.strerror(errno.ENOSPC)}: {free} bytes free on the filesystem of {where}"
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if limit != resource.RLIM_INFINITY and folder.is_dir():
        big = next((p for p in folder.rglob("*") if p.is_file() and p.stat().st_size >= limit), None)
        if big is not None:
            return errno.EFBIG, (f"{os.strerror(errno.EFBIG)}: {big.name} reached the file-size limit of "
                                 f"{limit} bytes (ulimit -f)")
    return None


def _rotate(output_dir: str | Path, keep: int, best_metric: str | None, greater_is_better: bool) -> None:
    ckpts = checkpoint_dirs(output_dir)
    kept = _to_keep(ckpts, keep, best_checkpoint(ckpts, best_metric, greater_is_better))
    for old in ckpts:
        if old not in kept:
            shutil.rmtree(old, ignore_errors=True)


def record_final_eval(accelerator, ckpt: Path, metrics: dict[str, Any], keep: int, best_metric: str | None = None,
                      greater_is_better: bool = True) -> None:
    """Add the final evaluation to the last checkpoint (written before it, so that a stop during
    the evaluation loses nothing): one atomic file beside the checksummed ones, read by
    ``read_state`` as the checkpoint's metrics; then the rotation again, for the best one."""
    if accelerator.is_main_process and ckpt.is_dir():
        tmp = ckpt / (FINAL_EVAL + ".tmp")
        tmp.write_text(json.dumps(metrics, indent=2))
        os.replace(tmp, ckpt / FINAL_EVAL)
        _rotate(ckpt.parent.parent, keep, best_metric, greater_is_better)
    accelerator.wait_for_everyone()


def _file_digest(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _file_digests(paths: list[Path]) -> list[str]:
    """SHA-256 of each file, several files at once: hashlib releases the GIL while it hashes, so the
    weights and the optimizer state (the two big files) are hashed on two cores. Files of the
    0.5B-shaped model's checkpoint sizes (1.4 and 2.8 GB, in the page cache), 2 cores: 2.9 s one after
    the other, 1.9 s at once (``python -c "from rlreason.run.checkpoint import _benchmark_digests as b; b()"``)."""
    with ThreadPoolExecutor(max_workers=max(1, min(len(paths), os.cpu_count() or 1, 8))) as pool:
        return list(pool.map(_file_digest, paths))


def _benchmark_digests(sizes_mb: tuple[int, ...] = (1400, 2800)) -> None:
    """Print the time to hash files of ``sizes_mb`` one after the other and with ``_file_digests``."""
    import tempfile
    import time

    with tempfile.TemporaryDirectory() as tmp:
        paths = [Path(tmp) / f"f{i}" for i in range(len(sizes_mb))]
        for path, mb in zip(paths, sizes_mb, strict=True):
            with open(path, "wb") as f:
                for _ in range(mb):
                    f.write(os.urandom(1 << 20))
        t0 = time.perf_counter()
        for path in paths:
            _file_digest(path)
        t1 = time.perf_counter()
        _file_digests(paths)
        t2 = time.perf_counter()
    print(f"{'+'.join(map(str, sizes_mb))} MB: one after the other {t1 - t0:.2f} s, at once {t2 - t1:.2f} s")


def write_manifest(ckpt: Path) -> None:
    """``manifest.json``: size and SHA-256 of every file of the checkpoint, written last."""
    paths = [p for p in sorted(ckpt.rglob("*")) if p.is_file() and p.name not in (MANIFEST, FINAL_EVAL)]
    files = {p.relative_to(ckpt).as_posix(): {"size": p.stat().st_size, "sha256": digest}
             for p, digest in zip(paths, _file_digests(paths), strict=True)}
    tmp = ckpt / (MANIFEST + ".tmp")
    with open(tmp, "w") as f:
        json.dump({"files": files}, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, ckpt / MANIFEST)


# checkpoints verified in this process, with every file's (name, size, mtime): the recipe checks
# before loading the model and the trainer again, and hashing twice would double the wait
_VERIFIED: set[tuple] = set()


def _stat_key(ckpt: Path) -> tuple:
    return (str(ckpt.resolve()), *sorted((str(p.relative_to(ckpt)), p.stat().st_size, p.stat().st_mtime_ns)
                                         for p in ckpt.rglob("*") if p.is_file()))


def verify_checkpoint(ckpt: str | Path) -> None:
    """Check every file against the manifest; a CorruptCheckpointError names the first bad file."""
    ckpt = Path(ckpt)
    manifest = ckpt / MANIFEST
    if not manifest.is_file():
        raise CorruptCheckpointError(f"checkpoint {ckpt} has no {MANIFEST} (its writing never finished, or it "
                                     f"predates checksums): cannot verify it")
    key = _stat_key(ckpt)
    if key in _VERIFIED:
        return
    try:
        files = json.loads(manifest.read_text())["files"]
    except (ValueError, KeyError, TypeError) as e:
        raise CorruptCheckpointError(f"checkpoint {ckpt}: {manifest} is damaged ({e})") from e
    for name, meta in files.items():
        path = ckpt / name
        if not path.is_file():
            raise CorruptCheckpointError(f"checkpoint {ckpt}: file {path} is missing")
        size = path.stat().st_size
        if size != meta["size"]:
            raise CorruptCheckpointError(f"checkpoint {ckpt}: file {path} is {size} bytes, the manifest says "
                                         f"{meta['size']} (truncated or overwritten)")
    paths = [ckpt / name for name in files]
    for path, digest, meta in zip(paths, _file_digests(paths), files.values(), strict=True):
        if digest != meta["sha256"]:
            raise CorruptCheckpointError(f"checkpoint {ckpt}: file {path} does not match its checksum (damaged)")
    _VERIFIED.add(key)


def resolve_resume(output_dir: str | Path, resume: str | None) -> Path | None:
    """``resume_from_checkpoint``: None -> None; "auto" -> the newest intact checkpoint in
    ``output_dir`` (a damaged one is skipped with a warning naming the file; None if there is
    no checkpoint at all: a fresh start); a path -> that checkpoint, verified."""
    if not resume:
        return None
    if resume == "auto":
        ckpts = checkpoint_dirs(output_dir)
        for ckpt in reversed(ckpts):
            try:
                verify_checkpoint(ckpt)
                return ckpt
            except CorruptCheckpointError as e:
                logger.warning("%s; falling back to the previous checkpoint", e)
        if ckpts:
            raise CorruptCheckpointError(
                f"resume_from_checkpoint: auto found no intact checkpoint in {Path(output_dir) / 'checkpoints'} "
                f"(all {len(ckpts)} failed verification, see the warnings); set 'overwrite_output_dir: true' "
                f"to start over")
        return None
    path = Path(resume)
    if not path.is_dir():
        raise FileNotFoundError(f"config key 'resume_from_checkpoint': no checkpoint folder at {path}")
    verify_checkpoint(path)
    return path


ABANDONED = "abandoned-"  # checkpoints/abandoned-<time>/: a dead branch, set aside by a resume from an older step
RUN_LOGS = ("metrics.jsonl", "completions.jsonl")


def set_aside_newer(output_dir: str | Path, step: int) -> Path | None:
    """A resume from the checkpoint of ``step`` makes the run's checkpoints of later steps a dead
    branch: they are moved into ``checkpoints/abandoned-<time>/`` (never resumed by ``auto``, never
    rotated, never counted as the best), with a copy of the logs as they were and that branch's
    final model and summary, if it had them; the resumed run's logs are then cut to ``step``
    (``truncate_jsonl``). Otherwise ``save_total_limit`` would keep the dead branch's higher steps
    and delete the new branch's checkpoints as they are written, and ``auto`` would go back to it.
    One warning names them and where they went. -> that folder, or None when there were none."""
    out = Path(output_dir)
    newer = [c for c in checkpoint_dirs(out) if int(CKPT_RE.match(c.name).group(1)) > step]
    if not newer:
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    dest, n = out / "checkpoints" / f"{ABANDONED}{stamp}", 1
    while dest.exists():
        dest, n = out / "checkpoints" / f"{ABANDONED}{stamp}-{n}", n + 1
    dest.mkdir()
    for name in RUN_LOGS:
        if (out / name).is_file():
            shutil.copy2(out / name, dest / name)
    for ckpt in newer:
        os.replace(ckpt, dest / ckpt.name)
    moved = [name for name in ("final_model", "summary.json") if (out / name).exists()]
    for name in moved:
        os.replace(out / name, dest / name)
    logger.warning("resuming from step %d while the run has later checkpoints (%s): a dead branch, set aside in %s "
                   "with %s; the logs continue from step %d", step, ", ".join(c.name for c in newer), dest,
                   " and ".join(["the logs as they were", *moved]), step)
    return dest


def check_output_dir(output_dir: str | Path, resume: str | None, overwrite: bool, delete: bool = True) -> None:
    """Refuse to start a new run over another run's checkpoints (they would be mixed up and
    then rotated away). ``overwrite`` deletes the old run's checkpoints and logs instead (where
    ``delete``: call it on every process, so all refuse alike, with ``delete`` on one)."""
    out = Path(output_dir)
    ckpts = checkpoint_dirs(out)
    if not ckpts or resume:
        return
    if not overwrite:
        raise FileExistsError(
            f"output_dir {out} holds another run's checkpoints ({ckpts[-1].name}, ...): set "
            f"'resume_from_checkpoint: auto' to continue it, 'overwrite_output_dir: true' to replace it, "
            f"or choose another 'output_dir'")
    if not delete:
        return
    shutil.rmtree(out / "checkpoints")
    for name in RUN_LOGS:
        (out / name).unlink(missing_ok=True)


def _final_eval_row(row: dict[str, Any]) -> bool:
    """A row of evaluation results alone: at a checkpoint's step, logged after the checkpoint
    (a periodic eval shares its step's row; the final one follows the final checkpoint)."""
    return all(k in ("step", "time") or k.startswith(("eval/", "suite/")) for k in row)


def truncate_jsonl(path: str | Path, max_step: int) -> None:
    """Drop rows logged after the checkpoint of ``max_step`` (by the run that died after it):
    later steps, and a final evaluation at that step, which the resumed run repeats. So the log
    reads as one uninterrupted run. A torn last line (the process
    died, or the disk filled, mid-write) is dropped with a warning; a damaged line before the
    last is an error naming the file and line."""
    path = Path(path)
    if not path.exists():
        return
    lines = path.read_text(errors="replace").splitlines(keepends=True)
    keep = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not line.endswith("\n") or not isinstance(row, dict):
                raise ValueError("an unfinished row")
        except ValueError as e:
            if i < len(lines) - 1:
                raise ValueError(f"{path} line {i + 1} is not a JSON row ({e}); fix or delete the line") from e
            logger.warning("%s: its last line is torn (%r...); dropping it", path, line[:40])
            continue
        step = row.get("step", 0)
        if step < max_step or (step == max_step and not (max_step > 0 and _final_eval_row(row))):
            keep.append(line)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(keep))
    os.replace(tmp, path)


def save_model(accelerator, model, tokenizer, out_dir: str | Path, intact: str = "") -> Path:
    """The policy in Hugging Face format (safetensors), loadable with from_pretrained; with LoRA
    the merged weights (a plain model), and the adapter itself in ``out_dir/adapter``. Written to
    ``.tmp-<name>`` beside ``out_dir`` and renamed into place: ``out_dir`` is complete or absent. A
    full disk is a ``DiskFullError`` naming the folder, then ``intact`` (where the weights still are)."""
    from rlreason.lora import is_peft_model, save_merged

    out_dir = Path(out_dir)
    tmp = out_dir.with_name(f".tmp-{out_dir.name}")
    unwrapped = accelerator.unwrap_model(model)
    accelerator.wait_for_everyone()
    state = None if is_peft_model(unwrapped) else accelerator.get_state_dict(model)  # gathers ZeRO-3 / FSDP shards
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        with _written_or_removed(tmp, f"the final model {out_dir.name}", intact or f"nothing was written to {out_dir}"):
            if state is None:
                save_merged(unwrapped, tokenizer, tmp)
                unwrapped.save_pretrained(tmp / "adapter", safe_serialization=True)
            else:
                unwrapped.save_pretrained(tmp, state_dict=state, safe_serialization=True)
                tokenizer.save_pretrained(tmp)
        _move_into_place(tmp, out_dir)
    accelerator.wait_for_everyone()
    return out_dir


def hf_model_files(model, tokenizer, folder: Path) -> None:
    """Make a checkpoint a Hugging Face model folder too: accelerate saved the weights as
    model.safetensors under the model's own names; with config.json, the generation config and
    the tokenizer next to them, ``from_pretrained(checkpoint)`` loads it (a full model; with
    LoRA the weights are the adapter-wrapped model's, so load final_model/ instead). ``model``
    is the unwrapped policy."""
    from rlreason.lora import is_peft_model

    if is_peft_model(model):
        return
    model.config.save_pretrained(folder)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
