"""Built-in tasks. Each task module generates problems, prompts and gold answers."""

from rlreason.data.tasks.arith import Difficulty, Problem, generate, split_of, to_records, trace

__all__ = ["Difficulty", "Problem", "generate", "split_of", "to_records", "trace"]
