"""Distil a stronger model into a smaller one: offline (rejection-sampled SFT) or on-policy.

    accelerate launch recipes/distill.py --config recipes/configs/distill_offline_tiny.yaml
    accelerate launch recipes/distill.py --config recipes/configs/distill_onpolicy_tiny.yaml

``distill_mode: offline``: the teacher (``teacher_model_name_or_path``) answers
``distill_num_problems`` training problems ``distill_samples_per_problem`` times; the reward
functions keep the verified answers (``distill_selection``: best_of_k, all_correct,
shortest_correct; ``distill_min_reward``; at most ``distill_max_per_problem`` per problem, equal
texts once); the result is saved with its provenance as a Hugging Face dataset
(``distill_dataset_path``, default ``output_dir/distill_data``; reused by a later run with the
same settings); then the student (``model_name_or_path``) is fine-tuned on it for
``max_steps`` steps (rlreason/loop/sft.py).

``distill_mode: on_policy``: GRPO's loop where the teacher scores every token the student
samples and the per-token reverse KL is the advantage (``teacher_kl_coef``), optionally plus
the verifier's (``teacher_reward_weight``). Teacher and student must share a tokenizer.

Both evaluate the student on held-out problems before and after, and write what
recipes/grpo_math.py writes (metrics.jsonl, report.html, summary.json, final_model/, ...).
See docs/distillation.md.
"""

from __future__ import annotations

if __name__ == "__main__":
    from rlreason.run.stopping import exit_on_stop_signals

    exit_on_stop_signals()  # the imports below take seconds: a stop meanwhile exits cleanly (status 0)

from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from accelerate import Accelerator  # noqa: E402

from rlreason.build.data import dataset_rewards, load_data  # noqa: E402
from rlreason.build.engine import separate_engine, teacher_engine  # noqa: E402
from rlreason.build.models import load_policy, load_teacher, load_tokenizer  # noqa: E402
from rlreason.build.run_dir import start  # noqa: E402
from rlreason.build.scoring import heldout_rewards, reward_runner  # noqa: E402
from rlreason.build.training import assemble  # noqa: E402
from rlreason.config import DistillConfig, parse_args  # noqa: E402
from rlreason.distill import offline  # noqa: E402
from rlreason.loop.sft import SFTTrainer  # noqa: E402
from rlreason.loop.trainer import GRPOTrainer  # noqa: E402
from rlreason.rewards import build_rewards  # noqa: E402
from rlreason.rollout import factory  # noqa: E402
from rlreason.run import finish, lock, stopping  # noqa: E402

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "distill_onpolicy_tiny.yaml"


def teacher_dataset(cfg: DistillConfig, acc: Accelerator, path: Path) -> tuple[Any, dict[str, Any], float]:
    """The teacher's verified answers at ``path``: reused when made with the same settings, else sampled.
    -> (dataset, provenance, seconds spent sampling)."""
    _, teacher_tok = load_tokenizer(cfg, acc, "teacher_model_name_or_path")
    train, _ = load_data(cfg, teacher_tok)  # prompts rendered with the teacher's own template
    reward_funcs, reward_weights = dataset_rewards(cfg, train)
    settings = offline.dataset_settings(cfg, teacher_tok, reward_funcs, reward_weights,
                                        min(cfg.distill_num_problems, len(train)))
    saved = offline.reuse_dataset(path, settings, log=acc.print)
    if saved is not None:
        return (*saved, 0.0)
    teacher, _ = load_teacher(cfg, acc)
    engine = teacher_engine(cfg, teacher, teacher_tok, acc)
    runner = reward_runner(cfg, reward_funcs, reward_weights)
    try:
        return offline.sample_dataset(cfg, acc, path, train, engine, runner, settings, log=acc.print)
    finally:
        runner.close()
        factory.close(engine)


def build_offline(cfg: DistillConfig) -> tuple[SFTTrainer, dict[str, Any]]:
    """The teacher's dataset, then the student's SFT run on it; -> (trainer, what the summary adds)."""
    acc, run_dir = start(cfg)
    data_path = Path(cfg.distill_dataset_path or run_dir.path / "distill_data")
    ds, prov, sample_s = teacher_dataset(cfg, acc, data_path)
    model, tokenizer = load_policy(cfg, acc)
    train = offline.for_student(ds, prov, cfg, tokenizer)
    _, eval_rows = load_data(cfg, tokenizer)
    eval_accuracy, eval_format = heldout_rewards(cfg, build_rewards(cfg.reward_funcs, cfg.reward_weights)[0])
    parts = assemble(cfg, model, tokenizer, train, [], eval_rows=eval_rows, eval_accuracy_fn=eval_accuracy,
                     eval_format_fn=eval_format, accelerator=acc, run_dir=run_dir, keep_dropout=True)
    info = {"dataset": str(data_path), "examples": len(train), "teacher_sampling_s": sample_s,
            "counts": prov.get("counts", {})}
    return SFTTrainer(cfg, parts), {"distill": info, "extra_time_s": sample_s}


def build_on_policy(cfg: DistillConfig) -> tuple[GRPOTrainer, dict[str, Any]]:
    """GRPO's parts with the teacher, whose per-token reverse KL is the advantage."""
    acc, run_dir = start(cfg)
    model, tokenizer = load_policy(cfg, acc)
    teacher, _ = load_teacher(cfg, acc, tokenizer)  # before the data: a tokenizer mismatch fails first
    train, eval_rows = load_data(cfg, tokenizer)
    reward_funcs, reward_weights = dataset_rewards(cfg, train)
    eval_accuracy, eval_format = heldout_rewards(cfg, reward_funcs)
    engine = separate_engine(cfg, model, tokenizer, acc)
    try:
        parts = assemble(cfg, model, tokenizer, train, reward_funcs, reward_weights, eval_rows=eval_rows,
                         eval_accuracy_fn=eval_accuracy, eval_format_fn=eval_format, engine=engine,
                         accelerator=acc, teacher=teacher, run_dir=run_dir)
    except BaseException:  # a stop signal or an error: the engine's processes and memory go with it
        factory.close(engine)
        raise
    return GRPOTrainer(cfg, parts), {}


def main(cfg: DistillConfig) -> dict[str, Any]:
    """Build, train, finish; -> the run's summary (``interrupted`` when a stop signal ended it)."""
    with stopping.handle_stop_signals():
        try:
            with finish.starting(cfg):
                trainer, extra = (build_offline if cfg.distill_mode == "offline" else build_on_policy)(cfg)
        except finish.StoppedBeforeTraining:
            return {"interrupted": True, "steps": None}
        try:
            with finish.training(trainer):  # the engine's workers closed when training ends
                summary = trainer.train()
            summary.update({k: v for k, v in extra.items() if k != "extra_time_s"})
            summary["total_time_s"] += extra.get("extra_time_s", 0.0)
            return finish.finish(trainer, summary, Path(cfg.output_dir))
        finally:
            lock.release(cfg.output_dir)


if __name__ == "__main__":
    with finish.clean_exit():  # a setting to fix: one line on stderr and exit status 1, no traceback
        summary = main(parse_args(default_config=DEFAULT_CONFIG, cls=DistillConfig))
    if summary["interrupted"]:  # stopped by a signal, everything written: exit before the grace period ends
        stopping.exit_stopped()
