"""Built-in tasks. Each task module generates problems, prompts and gold answers."""

from rlreason.data.tasks.arith import Difficulty, Problem, generate, split_of, to_records, trace

# ``dataset_name`` values that name a built-in task (generated, with its own held-out problems) rather
# than a file or a hub dataset: the addition chains, and the 3-digit products with a calculator tool.
EMBEDDED_TASKS = ("arith", "mul")

__all__ = ["EMBEDDED_TASKS", "Difficulty", "Problem", "generate", "split_of", "to_records", "trace"]
