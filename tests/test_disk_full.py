"""A full disk while a checkpoint or the final model is written: a real one, a small tmpfs filled up
(ENOSPC; mounting it needs root, skipped without), and a file-size limit (``ulimit -f``: EFBIG,
anywhere). In-process trainers on the tiny model (its checkpoint: 3.3 MB of weights, 6.6 MB of
optimizer state). The error says disk full and names the folder; the half-written folder is gone; the
previous checkpoint is intact and resumes; the final model is written whole or not at all."""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
import torch
from _configs import demo_config
from accelerate import Accelerator
from test_async_rollouts import SMALL, _varied_reward
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlreason.build import assemble
from rlreason.data import arith_dataset, prepare
from rlreason.loop.trainer import GRPOTrainer
from rlreason.run import checkpoint, finish
from rlreason.run.checkpoint import DiskFullError, resolve_resume, verify_checkpoint


class _Disk:
    """A folder whose space runs out on ``fill(room)``: at most ``room`` more bytes can be written (a
    tmpfs filled with a file), or any file stops at ``room`` bytes (RLIMIT_FSIZE, this process);
    ``free()`` gives the space back."""

    def __init__(self, kind: str, root: Path) -> None:
        self.kind, self.path = kind, root / "disk"
        self.path.mkdir()
        self.limit = resource.getrlimit(resource.RLIMIT_FSIZE)
        if kind == "tmpfs":
            if os.geteuid() != 0 or shutil.which("mount") is None:
                pytest.skip("mounting a tmpfs needs root")
            done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=40m", "tmpfs", str(self.path)],
                                  capture_output=True, text=True)
            if done.returncode != 0:
                pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")

    def fill(self, room: int) -> None:
        if self.kind == "tmpfs":
            st = os.statvfs(self.path)
            with open(self.path / f"filler-{uuid.uuid4().hex}", "wb") as f:
                f.truncate(0)
                f.write(b"\0" * (st.f_bavail * st.f_frsize - room))
        else:
            resource.setrlimit(resource.RLIMIT_FSIZE, (room, self.limit[1]))

    def free(self) -> None:
        if self.kind == "tmpfs":
            for filler in self.path.glob("filler-*"):
                filler.unlink()
        else:
            resource.setrlimit(resource.RLIMIT_FSIZE, self.limit)

    def close(self) -> None:
        self.free()
        if self.kind == "tmpfs":
            subprocess.run(["umount", "-l", str(self.path)], check=True)  # lazily: a failed write may hold a file


@pytest.fixture(params=["tmpfs", "ulimit"])
def disk(request, tmp_path):
    d = _Disk(request.param, tmp_path)
    yield d
    d.close()


def _trainer(tiny_path, out: Path, **overrides) -> GRPOTrainer:
    cfg = demo_config(output_dir=str(out), **{**SMALL, "save_steps": 1, "save_total_limit": 5, **overrides})
    tok = AutoTokenizer.from_pretrained(tiny_path)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_path)
    train = prepare(arith_dataset(64, 0, "train"), tokenizer=tok)
    return GRPOTrainer(cfg, assemble(cfg, model, tok, train, [_varied_reward], accelerator=Accelerator(cpu=True)))


def test_a_full_disk_says_so_keeps_the_previous_checkpoint_and_no_half_written_folder(tiny_path, disk, capsys):
    out = disk.path / "run"
    _trainer(tiny_path, out, max_steps=2).train()
    ckpts = out / "checkpoints"
    previous = ckpts / "step-0000002"
    tr = _trainer(tiny_path, out, max_steps=3, resume_from_checkpoint="auto")
    disk.fill(5_000_000)  # the weights fit, the optimizer state does not
    with pytest.raises(DiskFullError) as e:
        tr.train()
    disk.free()
    message = str(e.value)
    assert message.startswith("disk full: checkpoint step-0000003 could not be written to "
                              f"{ckpts / '.tmp-step-0000003'} (")
    assert f"the previous checkpoint, {previous}, is intact" in message
    assert "basic_ios" not in message and "unexpected pos" not in message
    with pytest.raises(SystemExit) as stop, finish.clean_exit():  # a recipe: that line, exit status 1
        raise e.value
    assert stop.value.code == 1 and capsys.readouterr().err.endswith(f"error: {message}\n")
    assert sorted(p.name for p in ckpts.iterdir()) == ["step-0000001", "step-0000002"]  # no .tmp-step-*
    checkpoint._VERIFIED.clear()  # hash it again
    verify_checkpoint(previous)
    assert resolve_resume(out, "auto") == previous

    tr = _trainer(tiny_path, out, max_steps=3, resume_from_checkpoint="auto")  # resumes from it
    tr.train()
    assert (ckpts / "step-0000003").is_dir()
    disk.fill(1_000_000)  # less than the weights
    with pytest.raises(DiskFullError) as e:
        tr.save_final(out / "final_model")
    disk.free()
    message = str(e.value)
    assert message.startswith(f"disk full: the final model final_model could not be written to "
                              f"{out / '.tmp-final_model'} (")
    assert f"the trained weights are in checkpoint {ckpts / 'step-0000003'}" in message
    assert not (out / "final_model").exists() and not (out / ".tmp-final_model").exists()
    tr.save_final(out / "final_model")  # with room: written whole
    assert AutoModelForCausalLM.from_pretrained(out / "final_model") is not None
    assert not (out / ".tmp-final_model").exists()
