"""Train a model to reason with GRPO.

    accelerate launch recipes/grpo_math.py                      # the embedded default (tiny_cpu.yaml)
    accelerate launch recipes/grpo_math.py --config recipes/configs/<run>.yaml --learning_rate 2e-6

The whole run, top to bottom: the config -> the parts, each from a small builder
(rlreason/build/, in order in rlreason/build/grpo.py) -> the trainer (rlreason/loop/) -> the end
(final model, summary). It evaluates
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

from rlreason.build.grpo import start_trainer, train_and_finish  # noqa: E402
from rlreason.config import GRPOConfig, parse_args  # noqa: E402
from rlreason.run import finish, stopping  # noqa: E402

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "tiny_cpu.yaml"  # the laptop demo (make demo)


def main(cfg: GRPOConfig) -> dict[str, Any]:
    """Build, train, finish; -> the run's summary (``interrupted`` when a stop signal ended it).

    The parts come from rlreason/build/grpo.py's ``build`` (read it for the order: output folder,
    policy, teacher, data, rewards, held-out scorer, engine, then ``assemble``): the same code
    ``rlreason.GRPOTrainer`` (TRL's Python API) runs; copy it here to change the wiring."""
    # From here on SIGTERM / Ctrl-C stop the run cleanly (rlreason/run/stopping.py): at once while
    # it builds (nothing trained yet), at the next step boundary with a checkpoint later.
    with stopping.handle_stop_signals():
        try:
            trainer = start_trainer(cfg)  # the parts (rlreason.build.grpo.build); a resume restores its checkpoint
        except finish.StoppedBeforeTraining:
            return {"interrupted": True, "steps": None}
        return train_and_finish(trainer)  # train; final model, summary.json; the lock released


if __name__ == "__main__":
    with finish.clean_exit():  # a setting to fix: one line on stderr and exit status 1, no traceback
        summary = main(parse_args(default_config=DEFAULT_CONFIG))  # the YAML, then command-line overrides
    if summary["interrupted"]:  # stopped by a signal, everything written: exit before the grace period ends
        stopping.exit_stopped()
