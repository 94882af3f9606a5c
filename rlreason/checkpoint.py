"""Checkpoints written atomically: a crash mid-write never leaves a corrupt checkpoint.

A checkpoint is ``accelerate``'s ``save_state`` (model weights as safetensors, optimizer,
scheduler, the python/numpy/torch RNG states of every rank) plus ``trainer_state.json`` (step,
data position, counters, the last eval, config), written to a temporary folder that is
renamed into place only when complete. ``resume_from_checkpoint: auto`` picks the newest
complete one, so a kill at any moment resumes from the last finished checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

CKPT_RE = re.compile(r"^step-(\d+)$")
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


def read_state(ckpt: str | Path) -> dict[str, Any]:
    path = Path(ckpt) / "trainer_state.json"
    if not path.is_file():
        raise FileNotFoundError(f"{ckpt} is not a complete rlreason checkpoint (no trainer_state.json)")
    return json.loads(path.read_text())


def _to_keep(ckpts: list[Path], keep: int, best: Path | None) -> set[Path]:
    """The newest ``keep`` checkpoints, plus the best one (by the eval metric) if there is one."""
    kept = set(ckpts[-keep:]) if keep > 0 else set(ckpts)
    if best is not None:
        kept.add(best)
    return kept


def best_checkpoint(ckpts: list[Path], metric: str | None, greater_is_better: bool = True) -> Path | None:
    """The checkpoint whose saved ``metrics[metric]`` is best (None without a metric or values)."""
    if not metric:
        return None
    scored = [(read_state(c).get("metrics", {}).get(metric), c) for c in ckpts]
    scored = [(v, c) for v, c in scored if isinstance(v, int | float)]
    if not scored:
        return None
    pick = max if greater_is_better else min
    return pick(scored, key=lambda vc: vc[0])[1]


def save_checkpoint(accelerator, output_dir: str | Path, step: int, state: dict[str, Any], keep: int,
                    best_metric: str | None = None, greater_is_better: bool = True,
                    extra: Callable[[Path], None] | None = None) -> Path:
    """Save a full training state for ``step``; keep the newest ``keep`` checkpoints (and the
    best by ``state["metrics"][best_metric]`` when a metric is named). ``extra(folder)`` writes
    more files into the checkpoint on the main process, before it is made visible."""
    root = Path(output_dir) / "checkpoints"
    final = root / f"step-{step:07d}"
    tmp = root / f".tmp-step-{step:07d}"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if extra is not None:
            extra(tmp)
        (tmp / "trainer_state.json").write_text(json.dumps({"step": step, **state}, indent=2))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)  # atomic on one filesystem: the checkpoint appears complete or not at all
        ckpts = checkpoint_dirs(output_dir)
        kept = _to_keep(ckpts, keep, best_checkpoint(ckpts, best_metric, greater_is_better))
        for old in ckpts:
            if old not in kept:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def resolve_resume(output_dir: str | Path, resume: str | None) -> Path | None:
    """``resume_from_checkpoint``: None -> None; "auto" -> the newest complete checkpoint in
    ``output_dir`` (None if there is none: a fresh start); a path -> that checkpoint."""
    if not resume:
        return None
    if resume == "auto":
        ckpts = checkpoint_dirs(output_dir)
        return ckpts[-1] if ckpts else None
    path = Path(resume)
    if not path.is_dir():
        raise FileNotFoundError(f"config key 'resume_from_checkpoint': no checkpoint folder at {path}")
    read_state(path)  # complete?
    return path


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
    for name in ("metrics.jsonl", "completions.jsonl"):
        (out / name).unlink(missing_ok=True)


def truncate_jsonl(path: str | Path, max_step: int) -> None:
    """Drop rows logged after ``max_step`` (written by the run that died after the checkpoint
    it resumes from), so the log reads as one uninterrupted run."""
    path = Path(path)
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines(keepends=True)
            if line.strip() and json.loads(line).get("step", 0) <= max_step]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(keep))
    os.replace(tmp, path)


def save_model(accelerator, model, tokenizer, out_dir: str | Path) -> Path:
    """The policy in Hugging Face format (safetensors), loadable with from_pretrained."""
    out_dir = Path(out_dir)
    accelerator.wait_for_everyone()
    unwrapped = accelerator.unwrap_model(model)
    state = accelerator.get_state_dict(model)  # gathers shards under ZeRO-3 / FSDP
    if accelerator.is_main_process:
        unwrapped.save_pretrained(out_dir, state_dict=state, safe_serialization=True)
        tokenizer.save_pretrained(out_dir)
    accelerator.wait_for_everyone()
    return out_dir
