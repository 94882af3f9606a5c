"""The stop-signal windows of rlreason/run/stopping.py, with real signals to this process: a step in
flight is abandoned at once until it commits, then the signal only requests a stop; a deferred
block (a weight transfer) is never cut in the middle; with several processes (``enabled=False``)
the signal is only a request. Trainer-level behaviour: tests/test_preemption.py."""

from __future__ import annotations

import os
import signal
import time

import pytest

from rlreason.run import stopping


def _signal_self(sig: int = signal.SIGTERM) -> None:
    os.kill(os.getpid(), sig)
    time.sleep(0.05)  # the handler runs at the next bytecode boundary; a sleep is one


def test_a_signal_abandons_a_step_in_flight_at_once():
    reached = []
    with stopping.handle_stop_signals(), pytest.raises(stopping.Stopped, match="SIGTERM"), \
            stopping.step_in_flight():
        t0 = time.monotonic()
        _signal_self()
        reached.append(time.monotonic() - t0)  # never: the signal raised inside the sleep
    assert reached == []


def test_after_the_commit_a_signal_only_requests_a_stop():
    with stopping.handle_stop_signals():
        with stopping.step_in_flight():
            stopping.commit()
            _signal_self()  # the optimizer step would run here: not cut
            assert stopping.requested() and stopping.reason() == "SIGTERM"
        # a new step is refused on entry: the loop checkpoints at the boundary instead
        with pytest.raises(stopping.Stopped), stopping.step_in_flight():
            pytest.fail("entered a step after a stop was requested")
    assert not stopping.requested()  # cleared when the handlers are restored


def test_a_deferred_block_is_finished_then_the_step_is_abandoned():
    done = []
    with stopping.handle_stop_signals(), pytest.raises(stopping.Stopped), stopping.step_in_flight():
        with stopping.deferred():
            _signal_self()
            done.append("transfer")  # the whole transfer runs
        done.append("after")  # never: the stop raised when the block ended
    assert done == ["transfer"]


def test_with_several_processes_the_signal_is_a_request_for_the_stop_points():
    with stopping.handle_stop_signals(), stopping.step_in_flight(enabled=False):
        _signal_self()
        assert stopping.requested()


def test_a_second_sigint_interrupts_at_once():
    with stopping.handle_stop_signals():
        with stopping.step_in_flight():
            stopping.commit()
            _signal_self(signal.SIGINT)
        with pytest.raises(KeyboardInterrupt):
            _signal_self(signal.SIGINT)
