"""``python -m rlreason.eval``: see :mod:`rlreason.eval.cli`."""

from rlreason.run.stopping import exit_on_stop_signals

exit_on_stop_signals()  # the imports below take seconds: a stop meanwhile exits cleanly (status 0)

from rlreason.eval.cli import main  # noqa: E402

main()
