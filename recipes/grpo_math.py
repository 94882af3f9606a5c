"""Train a model to reason with GRPO.

    accelerate launch recipes/grpo_math.py                      # the embedded default (tiny_cpu.yaml)
    accelerate launch recipes/grpo_math.py --config recipes/configs/<run>.yaml --learning_rate 2e-6

The whole run, top to bottom: the config -> the parts, each from a small builder
(rlreason/build/) -> the trainer (rlreason/loop/) -> the end (final model, summary). It evaluates
on held-out problems before and after, and writes to ``output_dir``: metrics.jsonl,
completions.jsonl, plot.png, report.html, summary.json, config.yaml (resolved), checkpoints/ and
final_model/ (Hugging Face format). With ``teacher_model_name_or_path`` set: on-policy
distillation from that teacher (docs/distillation.md).
"""

from __future__ import annotations

if __name__ == "__main__":
    from rlreason.run.stopping import exit_on_stop_signals

    exit_on_stop_signals()  # the imports below take seconds: a stop meanwhile exits cleanly (status 0)

from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from rlreason.build.data import dataset_rewards, load_data  # noqa: E402
from rlreason.build.engine import separate_engine  # noqa: E402
from rlreason.build.models import load_policy, load_teacher  # noqa: E402
from rlreason.build.run_dir import start  # noqa: E402
from rlreason.build.scoring import heldout_rewards  # noqa: E402
from rlreason.build.training import assemble  # noqa: E402
from rlreason.config import GRPOConfig, parse_args  # noqa: E402
from rlreason.loop.parts import Parts  # noqa: E402
from rlreason.loop.trainer import GRPOTrainer  # noqa: E402
from rlreason.rollout import factory  # noqa: E402
from rlreason.run import finish, lock, stopping  # noqa: E402

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "tiny_cpu.yaml"  # the laptop demo (make demo)


def build(cfg: GRPOConfig) -> Parts:
    """Every part of the run, in the order that makes a wrong setting fail before the expensive steps."""
    acc, run_dir = start(cfg)  # accelerator; output folder checked and locked; reward names resolved
    model, tokenizer = load_policy(cfg, acc)
    teacher, _ = load_teacher(cfg, acc, tokenizer)  # before the data: a tokenizer mismatch fails first
    train, eval_rows = load_data(cfg, tokenizer)  # prompts and golds checked; the held-out rows
    reward_funcs, reward_weights = dataset_rewards(cfg, train)  # checked against the dataset's columns
    eval_accuracy, eval_format = heldout_rewards(cfg, reward_funcs)  # the built-in accuracy, or your task's reward
    engine = separate_engine(cfg, model, tokenizer, acc)  # vLLM, before the policy is prepared; else None
    try:
        return assemble(cfg, model, tokenizer, train, reward_funcs, reward_weights, eval_rows=eval_rows,
                        eval_accuracy_fn=eval_accuracy, eval_format_fn=eval_format, engine=engine,
                        accelerator=acc, teacher=teacher, run_dir=run_dir)
    except BaseException:  # a stop signal or an error: the engine's processes and memory go with it
        factory.close(engine)
        raise


def main(cfg: GRPOConfig) -> dict[str, Any]:
    """Build, train, finish; -> the run's summary (``interrupted`` when a stop signal ended it)."""
    # From here on SIGTERM / Ctrl-C stop the run cleanly (rlreason/run/stopping.py): at once while
    # it builds (nothing trained yet), at the next step boundary with a checkpoint later.
    with stopping.handle_stop_signals():
        try:
            with finish.starting(cfg):
                trainer = GRPOTrainer(cfg, build(cfg))  # a resume restores its checkpoint here
        except finish.StoppedBeforeTraining:
            return {"interrupted": True, "steps": None}
        try:
            with finish.training(trainer):  # the engine's workers closed when training ends
                summary = trainer.train()
            return finish.finish(trainer, summary, Path(cfg.output_dir))  # final model, summary.json
        finally:
            lock.release(cfg.output_dir)


if __name__ == "__main__":
    with finish.clean_exit():  # a setting to fix: one line on stderr and exit status 1, no traceback
        summary = main(parse_args(default_config=DEFAULT_CONFIG))  # the YAML, then command-line overrides
    if summary["interrupted"]:  # stopped by a signal, everything written: exit before the grace period ends
        stopping.exit_stopped()
