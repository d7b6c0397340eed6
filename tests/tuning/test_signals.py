"""The signal gate of tuning workers (jtcse/tuning/workers.py): a SIGTERM that arrives while optuna writes a trial
(inside `ask` or `tell`) must not leave that trial RUNNING, the failure CI met once in
test_sigterm_to_tune_stops_both_workers_and_writes_the_report."""

from __future__ import annotations

import os
import signal

import optuna
import pytest

from jtcse.tuning.workers import run_trial, signals_as_interrupt


class SignallingSampler(optuna.samplers.RandomSampler):
    """Sends SIGTERM to this process from inside `study.ask` (after the trial row exists) or `study.tell`."""

    def __init__(self, during: str):
        super().__init__(seed=0)
        self.during = during

    def before_trial(self, study, trial):
        super().before_trial(study, trial)
        if self.during == "ask":
            os.kill(os.getpid(), signal.SIGTERM)

    def after_trial(self, study, trial, state, values):
        if self.during == "tell":
            os.kill(os.getpid(), signal.SIGTERM)
        super().after_trial(study, trial, state, values)


def objective(trial):
    return trial.suggest_float("x", 0.0, 1.0)


@pytest.mark.parametrize("during", ["ask", "tell"])
def test_a_signal_while_optuna_writes_a_trial_never_leaves_it_running(during):
    study = optuna.create_study(sampler=SignallingSampler(during))
    with signals_as_interrupt(deferred=True) as gate:
        with pytest.raises(KeyboardInterrupt, match="SIGTERM"):
            run_trial(study, objective, gate)
            run_trial(study, objective, gate)  # a signal in `tell` is raised before the next trial starts
    states = [t.state for t in study.get_trials(deepcopy=False)]
    assert optuna.trial.TrialState.RUNNING not in states
    expected = optuna.trial.TrialState.FAIL if during == "ask" else optuna.trial.TrialState.COMPLETE
    assert states == [expected]
    assert gate.received == [signal.SIGTERM]


def test_an_open_gate_raises_at_once_a_deferred_one_at_its_next_interruptible_block():
    previous = signal.getsignal(signal.SIGTERM)
    with signals_as_interrupt() as gate:
        with pytest.raises(KeyboardInterrupt, match="SIGINT"):
            os.kill(os.getpid(), signal.SIGINT)  # Python runs the handler before the next line
        with signals_as_interrupt(deferred=True) as inner:
            assert inner is gate and not gate.open
            gate.received.clear()
            os.kill(os.getpid(), signal.SIGTERM)
            assert gate.received == [signal.SIGTERM]  # recorded, not raised
            with pytest.raises(KeyboardInterrupt, match="SIGTERM"), gate.interruptible():
                pass
            assert not gate.open
        assert gate.open  # the outer block's mode is back
    assert signal.getsignal(signal.SIGTERM) is previous
