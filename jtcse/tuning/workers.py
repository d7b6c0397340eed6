"""Workers: a loop that runs trials of the shared study, in this process or as ``jtcse tune-worker`` processes
(bounded waits, heartbeats; SIGTERM/SIGINT marks the running trial failed)."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from jtcse.config import Settings
from jtcse.tuning.objective import TrialObjective
from jtcse.tuning.settings import DEFAULT_TOWER_A, DEFAULT_TOWER_B
from jtcse.tuning.storage import load_study, make_pruner, make_sampler, trial_counts

log = logging.getLogger("jtcse.tuning")


class SignalGate:
    """SIGTERM and SIGINT as ``KeyboardInterrupt``, raised only where an interrupt leaves nothing torn.

    An interrupt raised inside optuna's ``ask`` (the trial row is written, the objective not yet entered) or
    ``tell`` (the state not yet written) would leave a trial RUNNING for good. A worker therefore keeps the gate
    closed: a signal is only recorded, and raised on entering :meth:`interruptible` (around the objective, where
    optuna marks the trial failed) or at :meth:`raise_if_received` (between trials).
    """

    def __init__(self, open_: bool):
        self.received: list[int] = []
        self.open = open_

    def __call__(self, signum: int, _frame) -> None:
        self.received.append(signum)
        if self.open:
            raise KeyboardInterrupt(signal.Signals(signum).name)

    def raise_if_received(self) -> None:
        if self.received:
            raise KeyboardInterrupt(signal.Signals(self.received[0]).name)

    @contextlib.contextmanager
    def interruptible(self):
        """A signal raises inside this block, including one received before it."""
        was_open, self.open = self.open, True
        try:
            self.raise_if_received()
            yield
        finally:
            self.open = was_open


_active_gate: SignalGate | None = None  # set while signals_as_interrupt is active


@contextlib.contextmanager
def signals_as_interrupt(*, deferred: bool = False):
    """SIGTERM (a scheduler's stop, ``kill``) stops like Ctrl-C: an exception, so the cleanup below runs.

    Yields the :class:`SignalGate`; ``deferred`` keeps it closed (see there). Only in the main thread, where
    Python delivers signals; an inner block shares the outer gate, in its own mode while it lasts.
    """
    global _active_gate
    if threading.current_thread() is not threading.main_thread():
        yield SignalGate(open_=not deferred)  # signals reach the main thread only
        return
    if _active_gate is not None:
        was_open, _active_gate.open = _active_gate.open, not deferred
        try:
            yield _active_gate
        finally:
            _active_gate.open = was_open
        return
    gate = SignalGate(open_=not deferred)
    previous = {signum: signal.signal(signum, gate) for signum in (signal.SIGTERM, signal.SIGINT)}
    _active_gate = gate
    try:
        yield gate
    finally:
        _active_gate = None
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def run_trial(study, objective, gate: SignalGate, callbacks=()) -> None:
    """One trial of ``study``; a signal received meanwhile fails this trial (or the next call), never tears it."""
    gate.raise_if_received()

    def interruptible_objective(trial):
        with gate.interruptible():
            return objective(trial)

    study.optimize(
        interruptible_objective, n_trials=1, catch=(Exception,), callbacks=list(callbacks), gc_after_trial=True
    )


def _available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def run_worker(
    settings: Settings,
    *,
    tower_a: str = DEFAULT_TOWER_A,
    tower_b: str = DEFAULT_TOWER_B,
    worker_index: int = 0,
    workers: int = 1,
    progress: bool = True,
) -> int:
    """Run trials of the (existing) study until it holds ``tune.n_trials`` finished trials; return how many ran here.

    A worker starts a trial only while finished + running trials stay below ``n_trials``; otherwise it waits
    for the running ones, so that a trial whose worker died (failed by its stale heartbeat and re-queued) is
    picked up. It stops early once ``tune.max_failed_trials`` of its own trials failed in this run.
    """
    import optuna
    from tqdm.auto import tqdm

    tune = settings.tune
    study = load_study(tune)
    optuna.storages.fail_stale_trials(study)
    sampler = make_sampler(tune, worker_index, len(study.get_trials(deepcopy=False)))
    study = load_study(tune, sampler=sampler, pruner=make_pruner(tune))
    threads = max(1, _available_cpus() // workers) if workers > 1 else None
    objective = TrialObjective(
        settings,
        tower_a=tower_a,
        tower_b=tower_b,
        worker=f"{socket.gethostname()}:{os.getpid()}/{worker_index}",
        threads=threads,
    )
    poll = min(tune.heartbeat_interval, 5)
    stack = contextlib.ExitStack()
    gate = stack.enter_context(signals_as_interrupt(deferred=True))  # a SIGTERM'd worker fails its trial, then exits
    counts = trial_counts(study)
    bar = tqdm(
        total=tune.n_trials,
        initial=min(counts.finished, tune.n_trials),
        desc=f"tune {tune.study_name}",
        unit="trial",
        dynamic_ncols=True,
        disable=not progress,
    )
    ran = failed_here = 0
    next_note = 0.0

    def count_failure(_study, frozen) -> None:
        nonlocal failed_here
        failed_here += frozen.state == optuna.trial.TrialState.FAIL

    try:
        while True:
            gate.raise_if_received()
            optuna.storages.fail_stale_trials(study)
            counts = trial_counts(study)
            bar.n = min(counts.finished, tune.n_trials)
            bar.set_postfix_str(str(counts))
            if counts.finished >= tune.n_trials:
                break
            if failed_here >= tune.max_failed_trials:
                log.error(
                    "worker %d: %d of its trials failed (tune.max_failed_trials): not starting more; see the "
                    "errors above",
                    worker_index,
                    failed_here,
                )
                break
            if counts.finished + counts.running >= tune.n_trials:
                # The last trials run elsewhere; stay to retry one whose worker dies. The wait is bounded: each
                # of them completes, or is failed grace_period after its last heartbeat (or its start, if none).
                if time.monotonic() >= next_note:
                    log.info(
                        "worker %d: waiting for %d trial(s) running in other workers (%s); a trial of a dead "
                        "worker is failed and re-queued %d s after its last heartbeat",
                        worker_index,
                        counts.running,
                        counts,
                        tune.grace_period,
                    )
                    next_note = time.monotonic() + 60
                with gate.interruptible():
                    time.sleep(poll)
                continue
            run_trial(study, objective, gate, callbacks=[count_failure])
            ran += 1
        gate.raise_if_received()
    finally:
        bar.close()
        stack.close()
    log.info("worker %d: ran %d trial(s); study %r: %s", worker_index, ran, tune.study_name, trial_counts(study))
    return ran


def worker_command(
    settings_path: str | os.PathLike, *, tower_a: str, tower_b: str, worker_index: int = 0, workers: int = 1
) -> list[str]:
    """The command line of one worker process of a prepared study: ``jtcse tune-worker ... --no-create``.

    Run as ``python -m jtcse`` with this interpreter, not the ``jtcse`` script found on PATH, so that the worker
    imports the same jtcse (and environment) as the process that starts it.
    """
    return [
        sys.executable,
        "-m",
        "jtcse",
        "tune-worker",
        "--params",
        str(settings_path),
        "--tower-a",
        str(tower_a),
        "--tower-b",
        str(tower_b),
        "--worker-index",
        str(worker_index),
        "--workers",
        str(workers),
        "--no-create",
    ]


def worker_env(workers: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        PYTHONUNBUFFERED="1",
        TQDM_DISABLE="1",
    )
    if workers > 1:
        env.setdefault("OMP_NUM_THREADS", str(max(1, _available_cpus() // workers)))
    return env


def spawn_worker(
    settings_path: str | os.PathLike,
    *,
    tower_a: str,
    tower_b: str,
    worker_index: int,
    workers: int,
    log_dir: str | os.PathLike,
) -> subprocess.Popen:
    """Start one worker process; its output goes to ``log_dir/worker-<index>.log``."""
    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"worker-{worker_index}.log"
    with log_path.open("ab") as fh:
        fh.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} worker {worker_index}/{workers}\n".encode())
        proc = subprocess.Popen(
            worker_command(settings_path, tower_a=tower_a, tower_b=tower_b, worker_index=worker_index, workers=workers),
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=worker_env(workers),
        )
    proc.log_path = log_path  # type: ignore[attr-defined]
    return proc


def log_tail(path: str | os.PathLike, lines: int = 20) -> str:
    try:
        return "\n".join(Path(path).read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _stop(procs: list[subprocess.Popen], timeout: float = 30) -> None:
    """Ask every worker to stop (its running trial is marked failed), wait up to ``timeout`` s, then kill."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # optuna marks the running trial failed, then the worker exits
    deadline = time.monotonic() + timeout
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("worker pid %d did not stop within %.0f s of SIGINT; killed", proc.pid, timeout)
            proc.kill()
            proc.wait(timeout=timeout)


def run_worker_processes(
    settings_path: str | os.PathLike,
    settings: Settings,
    *,
    tower_a: str,
    tower_b: str,
    log_dir: str | os.PathLike,
    progress: bool = True,
) -> list[int]:
    """Run ``tune.workers`` worker processes against the prepared study; show progress; return their exit codes."""
    from tqdm.auto import tqdm

    tune = settings.tune
    procs = [
        spawn_worker(
            settings_path, tower_a=tower_a, tower_b=tower_b, worker_index=i, workers=tune.workers, log_dir=log_dir
        )
        for i in range(tune.workers)
    ]
    log.info("%d worker processes started (pids %s); logs in %s", len(procs), [p.pid for p in procs], log_dir)
    study = load_study(tune)
    bar = tqdm(
        total=tune.n_trials, desc=f"tune {tune.study_name}", unit="trial", dynamic_ncols=True, disable=not progress
    )
    try:
        while any(p.poll() is None for p in procs):
            counts = trial_counts(study)
            bar.n = min(counts.finished, tune.n_trials)
            bar.set_postfix_str(str(counts))
            time.sleep(2)
    except BaseException:
        _stop(procs)
        raise
    finally:
        bar.n = min(trial_counts(study).finished, tune.n_trials)
        bar.close()
    codes = [p.returncode for p in procs]
    for i, (proc, code) in enumerate(zip(procs, codes)):
        if code:
            log.error(
                "worker %d (pid %d) exited with %d; last lines of %s:\n%s",
                i,
                proc.pid,
                code,
                proc.log_path,
                log_tail(proc.log_path),
            )  # type: ignore[attr-defined]
    return codes
