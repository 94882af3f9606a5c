"""Train a model to reason with GRPO.

    accelerate launch recipes/grpo_math.py                      # the embedded default (tiny_cpu.yaml)
    accelerate launch recipes/grpo_math.py --config recipes/configs/<run>.yaml --learning_rate 2e-6

Builds everything from the config, evaluates on held-out problems before and after,
trains, and writes to ``output_dir``: metrics.jsonl, completions.jsonl, plot.png,
summary.json, config.yaml (resolved), checkpoints/ and final_model/ (Hugging Face format).
"""

from __future__ import annotations

import signal
import sys

if __name__ == "__main__":
    # The imports below take seconds. A stop signal meanwhile finds nothing started: exit cleanly
    # (status 0), as one during the model build does. run() installs the real handlers, and puts
    # these back when it returns (a signal in the interpreter's teardown: the run is written).
    def _stop_outside_training(signum: int, frame: object) -> None:
        sys.stderr.write(f"{signal.Signals(signum).name}: stopping; no training in progress, nothing to save\n")
        sys.exit(0)

    for _signal in (signal.SIGTERM, signal.SIGINT):
        signal.signal(_signal, _stop_outside_training)

import contextlib  # noqa: E402
import inspect  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
from pathlib import Path  # noqa: E402

import datasets  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
import yaml  # noqa: E402
from accelerate import Accelerator  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from rlreason import lock, lora, stopping, tiny  # noqa: E402
from rlreason.checkpoint import check_output_dir, read_state, resolve_resume  # noqa: E402
from rlreason.config import ConfigError, GRPOConfig, parse_args  # noqa: E402
from rlreason.data import arith_dataset, check_golds, filter_rows, load_dataset_any, prepare  # noqa: E402
from rlreason.distill import check_same_tokenizer  # noqa: E402
from rlreason.eval.suites import arith_suite  # noqa: E402
from rlreason.host import capped_threads, exit_with_launcher  # noqa: E402
from rlreason.resume import check_config_changes  # noqa: E402
from rlreason.rewards import RewardSpecError, accuracy_reward, build_rewards, format_reward, parse_gold  # noqa: E402
from rlreason.tasks.arith import Difficulty  # noqa: E402
from rlreason.trainer import INTERNAL_COLUMNS, GRPOTrainer, RewardFailureError  # noqa: E402

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "tiny_cpu.yaml"


# Errors that say what to fix, run as a script: one line on stderr and exit code 1, no
# traceback (RLREASON_TRACEBACK=1 shows it). Always for these; for the errors of building the
# run's parts (a path, a column, a value: ValueError, OSError, ImportError) until training starts.
CLEAN_ERRORS = (ConfigError, RewardSpecError, RewardFailureError, FloatingPointError)
STARTUP_ERRORS = (ValueError, OSError, ImportError)
_training = {"started": False}


def training_starts() -> None:
    """From here on an unexpected error keeps its traceback (it is a bug to report, not a setting)."""
    _training["started"] = True


@contextlib.contextmanager
def clean_exit():
    try:
        yield
    except Exception as e:
        if os.environ.get("RLREASON_TRACEBACK") or not (
                isinstance(e, CLEAN_ERRORS) or (isinstance(e, STARTUP_ERRORS) and not _training["started"])):
            raise
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(1) from None


def load_tokenizer(cfg: GRPOConfig, acc: Accelerator, key: str = "model_name_or_path"):
    """(resolved path, tokenizer) of the model named by config key ``key``: an embedded tiny
    model (built on first use), a local folder or a hub id."""
    path = getattr(cfg, key)
    if path in tiny.SPECS:  # "tiny" (dense Qwen2), "tiny-moe" (Qwen2-MoE), "tiny-small" (a smaller Qwen2)
        with acc.main_process_first():  # one process builds the cached model, the others reuse it
            path = str(tiny.ensure(tiny.SPECS[path], log=acc.print))
    local = Path(path).expanduser()
    if not local.exists() and (path.startswith((".", "/", "~")) or path.count("/") > 1):
        raise FileNotFoundError(f"config key '{key}': no model folder at {path}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=cfg.trust_remote_code)
    except OSError as e:
        raise OSError(f"config key '{key}': cannot load a tokenizer from {path!r} (neither a local "
                      f"model folder nor a reachable hub model): {e}") from e
    if key == "model_name_or_path" and cfg.chat_template:  # as TRL: the config's template replaces the model's
        tokenizer.chat_template = cfg.chat_template
    if tokenizer.pad_token_id is None:
        raise ValueError(f"config key '{key}': the tokenizer of {path} has no pad token; set one in the model folder")
    return path, tokenizer


def load_teacher(cfg: GRPOConfig, acc: Accelerator, tokenizer=None):
    """(teacher, its tokenizer) for distillation, or (None, None) without teacher_model_name_or_path.
    With the student's ``tokenizer`` given (on-policy distillation), the two must be the same."""
    if not cfg.teacher_model_name_or_path:
        return None, None
    path, teacher_tok = load_tokenizer(cfg, acc, "teacher_model_name_or_path")
    if tokenizer is not None:
        check_same_tokenizer(tokenizer, teacher_tok, cfg.model_name_or_path, cfg.teacher_model_name_or_path)
    teacher = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=cfg.trust_remote_code,
                                                   dtype=torch.float32 if acc.device.type == "cpu" else torch.bfloat16)
    return teacher.eval().requires_grad_(False), teacher_tok


def load_policy(cfg: GRPOConfig, acc: Accelerator):
    path, tokenizer = load_tokenizer(cfg, acc)
    quant = lora.quantization_config(cfg)
    model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=cfg.trust_remote_code,
                                                 dtype=torch.bfloat16 if quant else torch.float32,
                                                 quantization_config=quant)
    if cfg.use_peft:
        model = lora.apply_lora(model, cfg)
    return model, tokenizer


def build_engine(cfg: GRPOConfig, model, tokenizer, acc: Accelerator):
    """None (the trainer generates with transformers on the policy itself) or a vLLM engine:
    colocated in this process, or a client of a running ``rlreason-vllm-serve`` (server mode)."""
    if not cfg.use_vllm:
        return None
    if cfg.vllm_mode == "server":
        from rlreason.rollout.vllm_server import VLLMServerEngine

        url = cfg.vllm_server_base_url or f"http://{cfg.vllm_server_host}:{cfg.vllm_server_port}"
        engine = VLLMServerEngine(url, tokenizer, weight_transfer=cfg.vllm_weight_transfer,
                                  group_port=cfg.vllm_group_port, seed=cfg.seed + 1000 * acc.process_index,
                                  connect_timeout_s=cfg.vllm_server_timeout, is_sender=acc.is_main_process)
        engine.load_weights(lora.merged_named_parameters(model))  # the server may hold other weights than ours
        acc.wait_for_everyone()
        return engine
    try:
        from rlreason.rollout.vllm import VLLMEngine

        return VLLMEngine(model, tokenizer, gpu_memory_utilization=cfg.vllm_gpu_memory_utilization,
                          tensor_parallel_size=cfg.vllm_tensor_parallel_size,
                          enable_sleep_mode=cfg.vllm_enable_sleep_mode, seed=cfg.seed)
    except ImportError as e:
        raise SystemExit(f"config key 'use_vllm': vLLM is not installed here ({e}); see docs/install.md") from e


def load_data(cfg: GRPOConfig, tokenizer) -> tuple[datasets.Dataset, list[dict]]:
    common = dict(prompt_column=cfg.prompt_column, column_map=cfg.column_map, tokenizer=tokenizer,
                  use_chat_template=cfg.use_chat_template, template=cfg.prompt_template,
                  system_prompt=cfg.system_prompt, max_prompt_length=cfg.max_prompt_length)
    eval_rows: list[dict] = []
    if cfg.dataset_name == "arith":
        try:
            difficulty = Difficulty(**cfg.arith_difficulty)
        except TypeError as e:
            raise ValueError(f"config key 'arith_difficulty': {e}") from e
        train = prepare(arith_dataset(cfg.arith_train_size, cfg.seed, "train", difficulty), **common)
        n_eval = max(cfg.final_eval_size, cfg.eval_size)
        eval_rows = list(prepare(datasets.Dataset.from_list(arith_suite(n_eval, difficulty)), **common))
    else:
        raw = load_dataset_any(cfg.dataset_name, cfg.dataset_split, name=cfg.dataset_config)
        train = prepare(filter_rows(raw, cfg.dataset_filter), answer_column=None, **common)
    return train, eval_rows


def start(cfg: GRPOConfig) -> tuple[Accelerator, Path]:
    """The accelerator and the output folder (with the resolved config.yaml), after checking
    that the folder may be used and that the reward names resolve: before any model loads."""
    datasets.disable_progress_bars()  # one progress bar: the training one
    transformers.utils.logging.disable_progress_bar()
    # never more threads than usable cores (rlreason.host); unset: torch's default (OMP_NUM_THREADS or the cores)
    torch.set_num_threads(capped_threads(cfg.num_threads or torch.get_num_threads()))
    exit_with_launcher()  # a SIGTERM to `accelerate launch` reaches this process (it checkpoints and stops)
    acc = Accelerator(log_with=cfg.report_to or None, project_dir=cfg.output_dir)
    out = Path(cfg.output_dir)
    if acc.is_main_process:  # one run per folder, before anything is written or deleted there
        lock.acquire(out)
    # another run's checkpoints there: refuse (or, with overwrite_output_dir, delete) before any model loads
    check_output_dir(out, cfg.resume_from_checkpoint, cfg.overwrite_output_dir, delete=acc.is_main_process)
    # a damaged checkpoint, or settings the resumed run may not change, fail before any model loads
    resume = resolve_resume(out, cfg.resume_from_checkpoint)
    if resume is not None:
        check_config_changes(read_state(resume).get("config", {}), cfg, str(resume))
    if acc.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    acc.wait_for_everyone()
    build_rewards(cfg.reward_funcs, cfg.reward_weights)  # a bad reward name fails now, before any model loads
    return acc, out


def dataset_rewards(cfg: GRPOConfig, train: datasets.Dataset):
    """The reward functions, checked against the dataset's columns (a reward asking for a missing
    column fails here)."""
    columns = set(train.column_names) - {cfg.prompt_column, *INTERNAL_COLUMNS} | {"completion_ids"}
    funcs, weights = build_rewards(cfg.reward_funcs, cfg.reward_weights, columns=columns)
    if any(_takes(fn, "answer") for fn in funcs):  # a gold column that is all blank trains on nothing
        check_golds(train, "answer", parse=parse_gold)
    return funcs, weights


def _takes(fn, name: str) -> bool:
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def finish(acc: Accelerator, trainer: GRPOTrainer, summary: dict, out: Path) -> dict:
    """Final model, summary.json and the summary lines; then a clean exit of the process group."""
    if not summary["interrupted"]:  # a stopped run's state is in its checkpoint; it has no final model yet
        trainer.save_final(out / "final_model")
    if acc.is_main_process:
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
        print_summary(summary, out)
    acc.end_training()
    # Tear down the process group accelerate created (a clean exit under torchrun / accelerate
    # launch); a colocated vLLM owns its own single-process group and cleans it up itself.
    if acc.num_processes > 1 and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return summary


def run(cfg: GRPOConfig) -> dict:
    """GRPO; with ``teacher_model_name_or_path`` set, on-policy distillation from that teacher."""
    engine = None
    # From the first line on, SIGTERM / Ctrl-C stop the run cleanly (rlreason/stopping.py): at once
    # while it builds (nothing trained yet), at the next step boundary with a checkpoint later.
    with stopping.handle_stop_signals():
        try:
            with stopping.stop_at_once(enabled=int(os.environ.get("WORLD_SIZE", "1")) == 1):
                acc, out = start(cfg)
                model, tokenizer = load_policy(cfg, acc)
                teacher, _ = load_teacher(cfg, acc, tokenizer)  # before the data: a tokenizer mismatch fails first
                train, eval_rows = load_data(cfg, tokenizer)
                reward_funcs, reward_weights = dataset_rewards(cfg, train)
                engine = build_engine(cfg, model, tokenizer, acc)
                trainer = GRPOTrainer(cfg, model, tokenizer, train, reward_funcs, reward_weights=reward_weights,
                                      eval_rows=eval_rows, eval_accuracy_fn=accuracy_reward,
                                      eval_format_fn=format_reward, engine=engine, accelerator=acc, teacher=teacher)
        except stopping.Stopped as e:
            if engine is not None:
                engine.close()
            lock.release(cfg.output_dir)
            print(f"{e}: stopped before training started; nothing trained, nothing to save", file=sys.stderr)
            return {"interrupted": True, "steps": None}
        training_starts()
        try:
            try:
                summary = trainer.train()
            finally:
                if engine is not None:
                    engine.close()
            return finish(acc, trainer, summary, out)
        finally:
            lock.release(cfg.output_dir)


def main(argv: list[str] | None = None) -> dict:
    return run(parse_args(argv, default_config=DEFAULT_CONFIG))


def print_summary(s: dict, out: Path) -> None:
    lines = [f"steps {s['steps']} in {s['train_time_s']:.0f}s ({s['samples_per_s']:.1f} samples/s); "
             f"total {s['total_time_s']:.0f}s"]
    if "heldout_before" in s:
        lines.append(
            f"held-out greedy accuracy ({s['heldout_n']} problems): {s['heldout_before']:.3f} -> "
            f"{s['heldout_after']:.3f}  (gain {100 * s['gain']:+.1f} points, 95% CI "
            f"[{100 * s['gain_ci95'][0]:+.1f}, {100 * s['gain_ci95'][1]:+.1f}])")
    if s.get("interrupted"):
        lines.append(f"stopped early at step {s['steps']} (checkpoint saved): rerun with "
                     f"--resume_from_checkpoint auto to continue")
    lines.append(f"outputs in {out}/: report.html metrics.jsonl completions.jsonl plot.png summary.json config.yaml "
                 f"checkpoints/" + ("" if s.get("interrupted") else " final_model/"))
    print("\n".join(lines), file=sys.stderr)


if __name__ == "__main__":
    with clean_exit():
        main()
