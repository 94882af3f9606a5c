"""Checkpoints written atomically: a crash mid-write never leaves a corrupt checkpoint.

A checkpoint is ``accelerate``'s ``save_state`` (model, optimizer, scheduler, RNG states of
every rank) plus ``trainer_state.json`` (step, data position, config), written to a
temporary folder that is renamed into place only when complete.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
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


def save_checkpoint(accelerator, output_dir: str | Path, step: int, state: dict[str, Any], keep: int) -> Path:
    """Save a full training state for ``step``; keep the newest ``keep`` checkpoints."""
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
        (tmp / "trainer_state.json").write_text(json.dumps({"step": step, **state}, indent=2))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)  # atomic on one filesystem: the checkpoint appears complete or not at all
        for old in checkpoint_dirs(output_dir)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


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
