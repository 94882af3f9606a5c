"""``python -m rlreason.eval``: see :mod:`rlreason.eval.cli`."""

from rlreason.eval.cli import main

main()
