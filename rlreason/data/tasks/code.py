"""The embedded code task: write a Python function from input/output examples, checked by running it.

A problem is a line ``f(x) = a*x + b`` (``a`` in 1..29, ``b`` in 0..99 by default: 2,900 problems)
shown by its values at 0, 1 and 2; the model writes the function in a fenced block::

    user:      f(0)=3, f(1)=7, f(2)=11
    assistant: ```python
               def f(x):
                   return 3 + (7 - 3) * x
               ```

The reward runs the program on HIDDEN inputs (``HIDDEN_X``, never shown) in the sandbox: the
built-in ``code_tests`` reward (rewards/code.py) with the row's ``test_list`` of asserts, MBPP's
form. Like the tool demo's calculator, the program does the arithmetic the 0.8M tiny model cannot do
in its head: the model only has to copy the shown values into the right places.

Warm-up traces come from a *sloppy teacher* (``teacher``): with probability ``p_right`` it writes
the line above; otherwise (``WRONG_FORMS``) a lookup table of the shown values,
``return [3, 7, 11][x]`` (it passes the shown examples and fails every hidden one: the overfit
answer, and the teacher's favourite), or the line through the wrong intercept,
``return 7 + (7 - 3) * x``. A policy trained by imitation samples the right program about
``p_right`` of the time; decoding greedily, the demo's warm-up model writes the line on about 56% of
the held-out problems (docs/code.md, "A code demo"). RL on the execution reward alone can teach it to
always generalise.

The held-out problems are the ``HELDOUT_SIZE`` whose prompt hashes are smallest: exactly the rows
``eval_holdout_size: HELDOUT_SIZE`` holds out of a file with every problem in it
(rlreason.data.split), which is how the demo recipe reads the task (recipes/configs/tiny_code_cpu.yaml:
a data file and ``code_tests``, the path a code dataset of one's own takes). The warm-up never sees them.
"""

from __future__ import annotations

import argparse
import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from rlreason.data.split import holdout_split

SPLITS = ("train", "heldout")
SHOWN_X = (0, 1, 2)
HIDDEN_X = (3, 7, 10, 25)  # where the reward checks the program: none is shown
HELDOUT_SIZE = 1000
ENTRY_POINT = "f"
RIGHT = "line"
WRONG_FORMS = {"table": 0.7, "intercept": 0.3}  # how the teacher is wrong, when it is


@dataclass(frozen=True)
class CodeDifficulty:
    """The slopes' and intercepts' ranges (inclusive)."""

    min_a: int = 1
    max_a: int = 29
    min_b: int = 0
    max_b: int = 99

    def __post_init__(self) -> None:
        # a slope of 0 would make the wrong-intercept program right; negative values would make the
        # programs' text harder to copy (signs) without making the task more interesting
        if not 1 <= self.min_a <= self.max_a:
            raise ValueError(f"need 1 <= min_a <= max_a, got {self.min_a}, {self.max_a}")
        if not 0 <= self.min_b <= self.max_b:
            raise ValueError(f"need 0 <= min_b <= max_b, got {self.min_b}, {self.max_b}")


@dataclass(frozen=True)
class Problem:
    a: int
    b: int
    question: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "question", ", ".join(f"f({x})={self.value(x)}" for x in SHOWN_X))

    def value(self, x: int) -> int:
        return self.a * x + self.b


def prompt(problem: Problem) -> list[dict]:
    """The conversational prompt: the shown values as the user's message."""
    return [{"role": "user", "content": problem.question}]


def tests(problem: Problem) -> list[str]:
    """The hidden checks, as MBPP's ``test_list`` asserts."""
    return [f"assert {ENTRY_POINT}({x}) == {problem.value(x)}" for x in HIDDEN_X]


def universe(difficulty: CodeDifficulty = CodeDifficulty()) -> list[Problem]:
    """Every problem of ``difficulty``, in a fixed order."""
    return [Problem(a, b) for a in range(difficulty.min_a, difficulty.max_a + 1)
            for b in range(difficulty.min_b, difficulty.max_b + 1)]


def split(difficulty: CodeDifficulty = CodeDifficulty(), heldout_size: int = HELDOUT_SIZE,
          ) -> dict[str, list[Problem]]:
    """{"train": ..., "heldout": ...}: the held-out problems are those ``eval_holdout_size:
    heldout_size`` holds out of a file of ``to_records(universe(difficulty))`` (the same hash of the
    same prompt), so the recipe's held-out eval scores exactly the problems the warm-up never saw."""
    problems = universe(difficulty)
    train_idx, held_idx = holdout_split([prompt(p) for p in problems], heldout_size)
    return {"train": [problems[i] for i in train_idx], "heldout": [problems[i] for i in held_idx]}


def generate(n: int, seed: int, split_name: str = "train", difficulty: CodeDifficulty = CodeDifficulty(),
             heldout_size: int = HELDOUT_SIZE) -> list[Problem]:
    """``n`` problems of ``split_name`` drawn with repeats, reproducible from ``seed`` (the warm-up's)."""
    if split_name not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split_name!r}")
    pool = split(difficulty, heldout_size)[split_name]
    rng = random.Random(f"code:{seed}:{split_name}")
    return [rng.choice(pool) for _ in range(n)]


def program(problem: Problem, form: str = RIGHT) -> str:
    """The function ``form`` writes for ``problem``: RIGHT or one of WRONG_FORMS."""
    y0, y1, y2 = (problem.value(x) for x in SHOWN_X)
    body = {RIGHT: f"{y0} + ({y1} - {y0}) * x",
            "table": f"[{y0}, {y1}, {y2}][x]",
            "intercept": f"{y1} + ({y1} - {y0}) * x"}
    if form not in body:
        raise ValueError(f"form must be one of {sorted(body)}, got {form!r}")
    return f"def {ENTRY_POINT}(x):\n    return {body[form]}\n"


def answer(problem: Problem, form: str = RIGHT) -> str:
    """The assistant's message: ``program`` in a fenced python block (what ``extract_code`` reads)."""
    return f"```python\n{program(problem, form)}```"


def teacher_form(p_right: float, rng: random.Random) -> str:
    """The sloppy teacher's choice: RIGHT with probability ``p_right``, else a wrong form by WRONG_FORMS' weights."""
    if not 0.0 <= p_right <= 1.0:
        raise ValueError(f"p_right must be in [0, 1], got {p_right}")
    if rng.random() < p_right:
        return RIGHT
    return rng.choices(list(WRONG_FORMS), weights=list(WRONG_FORMS.values()))[0]


def teacher(problem: Problem, p_right: float, rng: random.Random) -> str:
    """The warm-up teacher's completion of ``problem``."""
    return answer(problem, teacher_form(p_right, rng))


def to_records(problems: list[Problem]) -> list[dict]:
    """Rows as ``code_tests`` reads them: the conversational ``prompt`` and the hidden ``test_list``."""
    return [{"prompt": prompt(p), "test_list": tests(p)} for p in problems]


def write_jsonl(path: Path, difficulty: CodeDifficulty = CodeDifficulty()) -> Path:
    """Every problem as a JSON-lines data file (the demo recipe's ``dataset_name``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for record in to_records(universe(difficulty)):
            f.write(json.dumps(record) + "\n")
    return path


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Write the embedded code task as a JSON-lines data file.")
    ap.add_argument("out", type=Path, help="the file to write, e.g. runs/code_task.jsonl")
    print(write_jsonl(ap.parse_args(argv).out))


if __name__ == "__main__":
    main()
