"""Train a model to reason with GRPO.

    accelerate launch recipes/grpo_math.py                      # the embedded default (tiny_cpu.yaml)
    accelerate launch recipes/grpo_math.py --config recipes/configs/<run>.yaml --learning_rate 2e-6

Builds everything from the config, evaluates on held-out problems before and after,
trains, and writes to ``output_dir``: metrics.jsonl, completions.jsonl, plot.png,
summary.json, config.yaml (resolved), checkpoints/ and final_model/ (Hugging Face format).
"""

from __future__ import annotations

if __name__ == "__main__":
    from rlreason.stopping import exit_on_stop_signals

    exit_on_stop_signals()  # the imports below take seconds: a stop meanwhile exits cleanly (status 0)

from pathlib import Path  # noqa: E402

from rlreason import run, stopping  # noqa: E402
from rlreason.config import parse_args  # noqa: E402

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "tiny_cpu.yaml"  # the laptop demo (make demo)

if __name__ == "__main__":
    with run.clean_exit():  # a setting to fix: one line on stderr and exit status 1, no traceback
        cfg = parse_args(default_config=DEFAULT_CONFIG)  # the YAML, then command-line overrides
        summary = run.grpo(cfg)  # build the parts (rlreason/build.py) -> train (rlreason/trainer.py) -> finish
    if summary["interrupted"]:  # stopped by a signal, everything written: exit before the grace period ends
        stopping.exit_stopped()
