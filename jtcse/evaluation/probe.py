"""A logistic-regression probe on frozen vectors and SentEval's three ways of choosing its L2 strength.

Kept apart from the encoders (numpy and scikit-learn only) because joblib's worker processes import it:
importing torch there cost more than the folds they share (73 s instead of 2 s on a busy 2-core machine).
"""

from __future__ import annotations

import functools
import warnings

import numpy as np
from threadpoolctl import threadpool_limits

#: SentEval's scikit-learn grids of the inverse L2 strength C.
C_GRID_SPLIT = tuple(2.0**t for t in range(-2, 4))
C_GRID_KFOLD = tuple(2.0**t for t in range(-1, 6))


def _one_blas_thread(protocol):
    """lbfgs on a few hundred features gains nothing from BLAS threads, and on a busy 2-core machine their
    spinning made each small fit 20-100x slower (measured): every protocol runs with one BLAS thread, and
    ``jobs`` processes (joblib, which limits its workers' BLAS threads the same way) share the folds."""

    @functools.wraps(protocol)
    def run(*args, **kwargs):
        with threadpool_limits(limits=1):
            return protocol(*args, **kwargs)

    return run


def _parallel(jobs: int):
    from joblib import Parallel

    return Parallel(n_jobs=jobs)


def fit_probe(x: np.ndarray, y: np.ndarray, c: float, *, seed: int, max_iter: int, probe=None):
    """Fit a logistic regression with inverse L2 strength ``c``; pass ``probe`` to warm-start from its weights."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    probe = probe if probe is not None else LogisticRegression(max_iter=max_iter, random_state=seed)
    probe.set_params(C=c)
    with warnings.catch_warnings():
        # a probe stopped at max_iter is still a valid (slightly under-fitted) probe; the grid picks among them
        warnings.simplefilter("ignore", ConvergenceWarning)
        probe.fit(x, y)
    return probe


def accuracy100(probe, x: np.ndarray, y: np.ndarray) -> float:
    return float(probe.score(x, y) * 100.0)


def _folds(y: np.ndarray, folds: int, seed: int):
    from sklearn.model_selection import StratifiedKFold

    return StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed).split(np.zeros(len(y)), y)


def grid_path(x: np.ndarray, y: np.ndarray, grid: tuple[float, ...], *, seed: int, max_iter: int):
    """Yield (C, fitted probe) along ``grid`` in increasing C, each fit warm-started from the previous one.

    The objective is strictly convex, so a warm start reaches the same optimum (up to lbfgs' tolerance) as a
    cold one, in about half the iterations (measured on TREC: 46 -> 21 CPU seconds for the C search).
    """
    from sklearn.linear_model import LogisticRegression

    probe = LogisticRegression(max_iter=max_iter, random_state=seed, warm_start=True)
    for c in sorted(grid):
        yield c, fit_probe(x, y, c, seed=seed, max_iter=max_iter, probe=probe)


def _path_accuracies(x_train, y_train, x_test, y_test, grid, seed, max_iter) -> list[float]:
    with threadpool_limits(limits=1):
        return [
            accuracy100(p, x_test, y_test) for _, p in grid_path(x_train, y_train, grid, seed=seed, max_iter=max_iter)
        ]


def select_c_by_cv(
    x: np.ndarray, y: np.ndarray, grid: tuple[float, ...], *, folds: int, seed: int, max_iter: int, jobs: int = 1
) -> tuple[float, float]:
    """The C of ``grid`` with the best mean stratified-CV accuracy (smallest C on ties) and that accuracy."""
    from joblib import delayed

    grid = tuple(sorted(grid))
    per_fold = _parallel(jobs)(
        delayed(_path_accuracies)(x[tr], y[tr], x[te], y[te], grid, seed, max_iter) for tr, te in _folds(y, folds, seed)
    )
    scores = np.mean(np.asarray(per_fold), axis=0)
    best = int(np.argmax(scores))
    return grid[best], float(scores[best])


def _outer_fold(x_train, y_train, x_test, y_test, grid, inner_folds, seed, max_iter) -> float:
    with threadpool_limits(limits=1):
        c, _ = select_c_by_cv(x_train, y_train, grid, folds=inner_folds, seed=seed, max_iter=max_iter)
        return accuracy100(fit_probe(x_train, y_train, c, seed=seed, max_iter=max_iter), x_test, y_test)


@_one_blas_thread
def cross_validated_accuracy(
    x: np.ndarray,
    y: np.ndarray,
    *,
    folds: int,
    inner_folds: int,
    seed: int,
    max_iter: int,
    grid: tuple[float, ...] = C_GRID_SPLIT,
    jobs: int = 1,
) -> float:
    """Mean test accuracy of a stratified ``folds``-fold CV; C is chosen inside each outer training part."""
    from joblib import delayed

    accuracies = _parallel(jobs)(
        delayed(_outer_fold)(x[tr], y[tr], x[te], y[te], grid, inner_folds, seed, max_iter)
        for tr, te in _folds(y, folds, seed)
    )
    return float(np.mean(accuracies))


@_one_blas_thread
def dev_selected_accuracy(
    train: tuple[np.ndarray, np.ndarray],
    dev: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    *,
    seed: int,
    max_iter: int,
    grid: tuple[float, ...] = C_GRID_SPLIT,
) -> float:
    """Fit on train for every C, keep the one best on dev (smallest C on ties), report its test accuracy."""
    best_dev, best_test = -1.0, 0.0
    for _, probe in grid_path(*train, grid, seed=seed, max_iter=max_iter):
        dev_accuracy = accuracy100(probe, *dev)
        if dev_accuracy > best_dev:
            best_dev, best_test = dev_accuracy, accuracy100(probe, *test)
    return best_test


@_one_blas_thread
def cv_selected_accuracy(
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    *,
    folds: int,
    seed: int,
    max_iter: int,
    grid: tuple[float, ...] = C_GRID_KFOLD,
    jobs: int = 1,
) -> float:
    """C chosen by stratified CV on train, refit on all of train, accuracy on test."""
    c, _ = select_c_by_cv(*train, grid, folds=folds, seed=seed, max_iter=max_iter, jobs=jobs)
    return accuracy100(fit_probe(*train, c, seed=seed, max_iter=max_iter), *test)
