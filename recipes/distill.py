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
``max_steps`` steps (rlreason/sft.py).

``distill_mode: on_policy``: GRPO's loop where the teacher scores every token the student
samples and the per-token reverse KL is the advantage (``teacher_kl_coef``), optionally plus
the verifier's (``teacher_reward_weight``). Teacher and student must share a tokenizer.

Both evaluate the student on held-out problems before and after, and write what
recipes/grpo_math.py writes (metrics.jsonl, report.html, summary.json, final_model/, ...).
See docs/distillation.md.
"""

from __future__ import annotations

if __name__ == "__main__":
    from rlreason.stopping import exit_on_stop_signals

    exit_on_stop_signals()  # the imports below take seconds: a stop meanwhile exits cleanly (status 0)

from pathlib import Path  # noqa: E402

from rlreason import run, stopping  # noqa: E402
from rlreason.config import DistillConfig, parse_args  # noqa: E402

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "distill_onpolicy_tiny.yaml"

if __name__ == "__main__":
    with run.clean_exit():  # a setting to fix: one line on stderr and exit status 1, no traceback
        cfg = parse_args(default_config=DEFAULT_CONFIG, cls=DistillConfig)
        # offline: teacher sampling (rlreason/distill_offline.py) -> SFT; on_policy: GRPO's loop
        summary = run.distill(cfg)
    if summary["interrupted"]:  # stopped by a signal, everything written: exit before the grace period ends
        stopping.exit_stopped()
