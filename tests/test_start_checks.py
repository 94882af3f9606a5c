"""Start-up checks added for issue 19 ("nothing lost, round two"): numeric config ranges, empty
data files and gold columns without a single gold, torn log lines, the output folder lock and
checkpoint checksums. Each fails with a message naming the key, column, file or holder."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import datasets
import pytest

from rlreason.config import ConfigError, GRPOConfig
from rlreason.data import check_golds, load_dataset_any
from rlreason.rewards import parse_gold
from rlreason.run import lock
from rlreason.run.checkpoint import (
    CorruptCheckpointError,
    resolve_resume,
    truncate_jsonl,
    verify_checkpoint,
    write_manifest,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(("key", "value"), [
    ("max_grad_norm", -1.0), ("max_grad_norm", 0.0), ("epsilon", 5.0), ("learning_rate", float("inf")),
    ("learning_rate", float("nan")), ("save_steps", -1), ("eval_steps", -5), ("per_device_train_batch_size", 0),
    ("gradient_accumulation_steps", 0), ("weight_decay", -0.1), ("adam_beta2", 1.0), ("warmup_steps", -1),
    ("logging_steps", 0), ("epsilon_high", -0.2), ("reward_memory_mb", 0), ("top_k", -1),
])
def test_numeric_keys_out_of_range_are_refused_naming_the_key(key, value):
    with pytest.raises(ConfigError, match=f"config key '{key}'"):
        GRPOConfig(**{key: value})


def test_allow_config_changes_names_only_optimizer_settings():
    GRPOConfig(allow_config_changes=["learning_rate", "max_grad_norm"])
    with pytest.raises(ConfigError, match="allow_config_changes.*num_generations"):
        GRPOConfig(allow_config_changes=["num_generations"])


def test_empty_jsonl_and_header_only_csv_name_the_file(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    header = tmp_path / "header.csv"
    header.write_text("prompt,answer\n")
    for path in (empty, header):
        with pytest.raises(ValueError, match=str(path)):
            load_dataset_any(str(path))


def test_a_gold_column_without_a_single_gold_is_an_error_naming_it():
    blank = datasets.Dataset.from_dict({"prompt": ["a", "b"], "answer": [None, " "]})
    with pytest.raises(ValueError, match="gold column 'answer'.*all 2 rows are empty"):
        check_golds(blank, "answer")
    wrong = datasets.Dataset.from_dict({"prompt": ["a", "b"], "answer": ["see the book", "ask someone"]})
    with pytest.raises(ValueError, match="gold column 'answer'.*none of the first 2"):
        check_golds(wrong, "answer", parse=lambda gold: None)  # a verifier that reads none of them
    check_golds(datasets.Dataset.from_dict({"prompt": ["a", "b"], "answer": [None, "3"]}), "answer", parse=parse_gold)


def test_a_torn_last_line_is_dropped_with_a_warning_naming_the_file(tmp_path, caplog):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "x": 1}\n{"step": 2, "x": 2}\n{"step": 3, "x": 3}\n{"step": ')  # a full disk
    with caplog.at_level(logging.WARNING, logger="rlreason.run.checkpoint"):
        truncate_jsonl(path, 2)
    assert path.read_text() == '{"step": 1, "x": 1}\n{"step": 2, "x": 2}\n'
    assert str(path) in caplog.text and "torn" in caplog.text
    path.write_text('{"step": 1}\n{"step": \n{"step": 2}\n')  # damage in the middle is not a torn tail
    with pytest.raises(ValueError, match=f"{path} line 2"):
        truncate_jsonl(path, 2)


def _hold_lock_in_a_child(out: Path) -> subprocess.Popen:
    script = f"""
        import sys, time
        from rlreason.run import lock
        lock.acquire({str(out)!r})
        print("locked", flush=True)
        time.sleep(600)
    """
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(script)], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "locked"
    return child


def test_a_second_run_in_a_locked_output_dir_is_refused_naming_the_holder(tmp_path):
    out = tmp_path / "run"
    holder = _hold_lock_in_a_child(out)
    try:
        res = subprocess.run([sys.executable, str(ROOT / "recipes" / "grpo_math.py"), "--output_dir", str(out),
                              "--max_steps", "1", "--progress", "false"], capture_output=True, text=True,
                             env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=300)
        assert res.returncode != 0
        assert f"is in use by another run (pid {holder.pid} on host {socket.gethostname()}" in res.stderr
        assert not (out / "config.yaml").exists()  # refused before writing anything there
    finally:
        holder.kill()
        holder.wait()


def test_a_stale_lock_from_a_killed_run_is_taken_over_with_a_warning(tmp_path, caplog):
    out = tmp_path / "run"
    holder = _hold_lock_in_a_child(out)
    holder.send_signal(signal.SIGKILL)  # no cleanup: the lock file stays, naming a dead pid
    holder.wait()
    assert (out / lock.LOCK_NAME).exists()
    with caplog.at_level(logging.WARNING, logger="rlreason.run.lock"):
        lock.acquire(out)
    try:
        assert "stale lock" in caplog.text and f"pid {holder.pid}" in caplog.text
        assert json.loads((out / lock.LOCK_NAME).read_text())["pid"] == os.getpid()
    finally:
        lock.release(out)
    assert not (out / lock.LOCK_NAME).exists()


def _fake_checkpoint(root: Path, step: int) -> Path:
    ckpt = root / "checkpoints" / f"step-{step:07d}"
    ckpt.mkdir(parents=True)
    (ckpt / "model.safetensors").write_bytes(bytes(range(256)) * 64)
    (ckpt / "trainer_state.json").write_text(json.dumps({"step": step}))
    write_manifest(ckpt)
    return ckpt


@pytest.mark.parametrize("damage", ["truncate", "overwrite", "flip", "delete_state"])
def test_a_damaged_checkpoint_is_named_and_auto_falls_back_to_an_intact_one(damage, tmp_path, caplog):
    good = _fake_checkpoint(tmp_path, 3)
    bad = _fake_checkpoint(tmp_path, 6)
    weights = bad / "model.safetensors"
    data = bytearray(weights.read_bytes())
    if damage == "truncate":
        weights.write_bytes(data[: len(data) // 2])
    elif damage == "overwrite":
        weights.write_bytes(data[: len(data) // 3] + os.urandom(len(data) // 3) + data[2 * len(data) // 3:])
    elif damage == "flip":
        data[1000] ^= 0x10
        weights.write_bytes(data)
    else:
        (bad / "trainer_state.json").unlink()
    named = "trainer_state.json" if damage == "delete_state" else "model.safetensors"
    with pytest.raises(CorruptCheckpointError, match=named):
        verify_checkpoint(bad)
    with pytest.raises(CorruptCheckpointError, match=named):
        resolve_resume(tmp_path, str(bad))
    with caplog.at_level(logging.WARNING, logger="rlreason.run.checkpoint"):
        assert resolve_resume(tmp_path, "auto") == good
    assert named in caplog.text and "falling back" in caplog.text
    (good / "model.safetensors").write_bytes(b"")
    with pytest.raises(CorruptCheckpointError, match="no intact checkpoint"):
        resolve_resume(tmp_path, "auto")
