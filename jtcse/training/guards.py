"""What keeps a training run safe to stop and to rerun: a lock per checkpoint folder, graceful SIGTERM/SIGINT.

* :class:`CheckpointLock` -- an exclusive ``flock`` on ``.<folder>.lock`` beside the checkpoint folder, held for the
  whole run and released by the kernel when the process ends (even after ``kill -9``): a second run in the same
  folder is refused instead of interleaving its log rows and checkpoints with the first one.
* :class:`StopSignals` -- SIGTERM (a pre-empted job, ``kill``) and SIGINT (Ctrl-C) only *ask* the loop to stop;
  the loop finishes the current step, writes a checkpoint and raises :class:`TrainingInterrupted`, whose message
  says how to resume. A second signal stops at once (``KeyboardInterrupt``); checkpoint writes are atomic either way.
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

from jtcse.errors import UserError
from jtcse.io import FolderLock

#: Signals that ask a run to stop after the current step (exit status 128 + signal number).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class TrainingInterrupted(KeyboardInterrupt):
    """A run stopped by SIGTERM/SIGINT after writing a checkpoint.

    A ``KeyboardInterrupt`` so that whatever drives the run (Optuna's ``catch=(Exception,)``, Prefect) stops
    too instead of treating it as one failed attempt among others.
    """

    def __init__(self, desc: str, step: int, checkpoint: Path | None, signum: int):
        self.desc, self.step, self.checkpoint, self.signum = desc, step, checkpoint, signum
        name = signal.Signals(signum).name
        where = f"checkpoint saved in {checkpoint}" if checkpoint is not None else "no checkpoint was written"
        super().__init__(f"{desc}: interrupted by {name} at step {step}; {where}; rerun the same command to resume")

    @property
    def exit_status(self) -> int:
        return 128 + self.signum  # the shell's convention: 130 for Ctrl-C, 143 for SIGTERM


class TrainingDiverged(UserError, FloatingPointError):
    """The loss became NaN/inf: the settings (learning rate, temperature) do not train; nothing was published."""


class CheckpointLocked(UserError):
    """Another run holds the checkpoint folder."""


class CheckpointLock(FolderLock):
    """Exclusive, non-blocking ``flock`` on the checkpoint folder's lock file (see the module doc)."""

    def __init__(self, checkpoint_dir: str | os.PathLike):
        super().__init__(checkpoint_dir)
        self.checkpoint_dir = self.target

    def refusal(self, holder: str) -> UserError:
        return CheckpointLocked(
            f"{self.checkpoint_dir}: another run is using this checkpoint folder "
            f"({holder}); wait for it to end, or give this run its own --checkpoint-dir "
            "and --output"
        )


class StopSignals:
    """Within the block, the first SIGTERM/SIGINT sets :attr:`received`; a second one raises KeyboardInterrupt.

    Only installs handlers in the main thread (Python delivers signals there alone); elsewhere it is inert.
    """

    def __init__(self, enabled: bool = True):
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum, _frame) -> None:
        if self.received is not None:
            raise KeyboardInterrupt(f"second {signal.Signals(signum).name}: stopping now")
        self.received = signum

    def __enter__(self) -> StopSignals:
        if self.enabled:
            for signum in STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
