"""Data-validation gate run before any JTCSE training or evaluation.

Why this exists: every number the project reports (STS12-16, STS-B, SICK-R
Spearman) is only meaningful if the evaluation files are exactly the official
ones and if none of their sentences were seen during unsupervised training.
Both properties break silently: a reader that treats ``"`` as a quote
character merges rows, a truncated copy drops pairs, and a corpus rebuilt from
a new source can pick up evaluation sentences. A trainer would happily run on
any of these and produce plausible-looking but wrong results, so the checks
run up front, all of them in one pass, and the gate fails loudly with every
problem on one line.

The checks are Great Expectations 1.x suites (Fluent API) so that the same
rules can be rendered as Data Docs for a human reviewer. The tables and their
expectations are built in :mod:`jtcse.data.suites`; this module runs them,
writes the report and the Data Docs, and raises one line naming every failure.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from jtcse.data.bundle_facts import DEFAULT_EXPECTED_ROWS
from jtcse.data.suites import Table, expectation_name, explain_failure, load_tables
from jtcse.errors import UserError
from jtcse.io import atomic_write_json

# GX phones home on import/context creation unless told not to; training
# machines are often offline, where that costs time and log noise.
os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")

logger = logging.getLogger(__name__)

__all__ = ["DataValidationError", "validate_data"]

_RESULT_FORMAT: dict[str, Any] = {
    # SUMMARY gives the total unexpected_count plus the first unexpected
    # index; our index is the 1-based file line number, which is all the
    # error message needs. COMPLETE would copy every bad value around.
    "result_format": "SUMMARY",
    "partial_unexpected_count": 1,
}


class DataValidationError(UserError):
    """Raised when any data expectation fails.

    The message is a single line ("; "-joined) so that it survives log
    collectors and CI summaries that keep only the first line of an error.
    ``failures`` keeps the same information as a list for programmatic use.
    """

    def __init__(self, failures: list[str]) -> None:
        self.failures = list(failures)
        super().__init__("; ".join(f.replace("\n", " ") for f in self.failures))


#: Great Expectations logs its internals at INFO: each expectation's unknown-field look-up ("_get_default_value
#: called with key ..."), and at import some 200 lines of "great_expectations._docs_decorators: Skipping registering
#: function ...". :func:`validate_data` raises these loggers to WARNING while it imports GX and works (the Data
#: Docs keep every result); GX's warnings and errors still show.
GX_NOISY_LOGGERS = (
    "great_expectations",
    "great_expectations._docs_decorators",
    "great_expectations.expectations.expectation",
)


@contextmanager
def _quiet_gx_logs() -> Iterator[Callable[[], None]]:
    """Silence GX's INFO chatter for the duration of a validation, its import included (restored afterwards, so
    importing jtcse changes no logging set-up). GX sets some of its loggers to INFO itself: call the function
    this yields after the import to raise those too."""
    changed: dict[logging.Logger, int] = {}

    def quiet() -> None:
        names = [
            *GX_NOISY_LOGGERS,
            *(n for n in logging.root.manager.loggerDict if n.startswith("great_expectations.")),
        ]
        for name in names:
            logger = logging.getLogger(name)
            if logger.level == logging.NOTSET and name != GX_NOISY_LOGGERS[0]:
                continue  # inherits from "great_expectations"
            if logger.level < logging.WARNING:
                changed.setdefault(logger, logger.level)
                logger.setLevel(logging.WARNING)

    quiet()
    try:
        yield quiet
    finally:
        for logger, level in changed.items():
            logger.setLevel(level)


def run_suites(context: Any, tables: list[Table]) -> tuple[dict[str, dict[str, dict[str, Any]]], list[str]]:
    """Run each table's expectation suite in the GX ``context``: the summary
    ``{file: {expectation: {"success", "unexpected_count"}}}`` and one failure line per failed expectation."""
    import great_expectations as gx

    source = context.data_sources.add_pandas("jtcse_data")
    summary: dict[str, dict[str, dict[str, Any]]] = {}
    failures: list[str] = []
    for i, table in enumerate(tables):
        entry = summary.setdefault(table.file, {})
        for name, (count, detail) in table.static_failures.items():
            entry[name] = {"success": False, "unexpected_count": count}
            failures.append(f"{table.file}: expectation {name} failed on {count} rows ({detail})")
        if not table.expectations:
            continue
        # One asset/suite/validation definition per file. ValidationDefinition
        # is run directly rather than through a gx.Checkpoint: a Checkpoint
        # hands the same batch_parameters (hence the same dataframe) to all of
        # its definitions, so it would take one Checkpoint per file, and that
        # store/freshness bookkeeping cost ~75 ms per file (~40% of a small
        # run) for no benefit - there is no action to trigger, and Data Docs
        # are built once at the end from the results store, which
        # ValidationDefinition.run fills just the same.
        key = f"{i:02d}_{table.file.replace('/', '_')}"
        batch_def = source.add_dataframe_asset(key).add_batch_definition_whole_dataframe("all")
        suite = context.suites.add(gx.ExpectationSuite(name=key, expectations=table.expectations))
        vdef = context.validation_definitions.add(gx.ValidationDefinition(name=key, data=batch_def, suite=suite))
        suite_result = vdef.run(batch_parameters={"dataframe": table.frame}, result_format=_RESULT_FORMAT)
        for result in suite_result.results:
            config = result.expectation_config
            name = expectation_name(config)
            if result.success:
                count = int((result.result or {}).get("unexpected_count") or 0)
                entry[name] = {"success": True, "unexpected_count": count}
                continue
            count, detail = explain_failure(table, config, result)
            entry[name] = {"success": False, "unexpected_count": count}
            failures.append(
                f"{table.file}: expectation {name} failed on {count} rows (e.g. {detail})"
                if detail.startswith("line ")
                else f"{table.file}: expectation {name} failed on {count} rows ({detail})"
            )
    return summary, failures


def write_data_docs(context: Any, docs_dir: Path) -> Path:
    """Build the Data Docs HTML of the suites run in ``context`` into ``docs_dir``; returns its index.html."""
    docs_dir = Path(docs_dir)
    docs_dir.mkdir(parents=True, exist_ok=True)
    # Repoint the ephemeral context's default site at docs_dir so the
    # index lands there directly (no temp dir to copy from).
    context.update_data_docs_site(
        "local_site",
        {
            "class_name": "SiteBuilder",
            "show_how_to_buttons": False,
            "store_backend": {
                "class_name": "TupleFilesystemStoreBackend",
                "base_directory": str(docs_dir.resolve()),
            },
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        },
    )
    context.build_data_docs(site_names=["local_site"])
    logger.info("data docs written to %s", docs_dir / "index.html")
    return docs_dir / "index.html"


def validate_data(
    data_dir: Path,
    corpus: Path,
    docs_dir: Path | None = None,
    report: Path | None = None,
    min_words: int = 3,
    max_words: int = 128,
    expected_rows: dict[str, int] | None = None,
) -> dict[str, dict[str, dict[str, Any]]]:
    """Validate the STS/SICK files and the training corpus, all in one pass.

    Every check runs even after earlier failures, so one run shows the whole
    damage instead of one problem per retry. Data Docs and the JSON report are
    written before raising, because a failing run is when they are needed.

    Args:
        data_dir: bundle root; the 11 evaluation/train TSVs are read from
            ``data_dir / "sts"``.
        corpus: one-sentence-per-line UTF-8 training text.
        docs_dir: if given, Data Docs HTML (``index.html``) is built there.
        report: if given, the JSON summary is written there atomically.
        min_words, max_words: allowed words per corpus line (inclusive).
        expected_rows: per-stem overrides of DEFAULT_EXPECTED_ROWS (e.g. for
            fixtures or a deliberately reduced bundle).

    Returns:
        ``{file: {expectation: {"success": bool, "unexpected_count": int}}}``.

    Raises:
        DataValidationError: one-line message listing every failed
            expectation as ``<file>: expectation <name> failed on <n> rows
            (e.g. line <k>: <value>)``.
    """
    with _quiet_gx_logs() as quiet:  # from the import on: GX logs ~200 INFO lines while it is imported
        import great_expectations as gx  # heavy (~4 s); only pay when validating
        import great_expectations.expectations as gxe
        from great_expectations.data_context.types.base import ProgressBarsConfig

        quiet()  # the loggers GX set to INFO while it was imported

        rows_wanted = {**DEFAULT_EXPECTED_ROWS, **(expected_rows or {})}
        tables = load_tables(
            Path(data_dir), Path(corpus), gxe, min_words=min_words, max_words=max_words, rows_wanted=rows_wanted
        )
        context = gx.get_context(mode="ephemeral")
        context.variables.progress_bars = ProgressBarsConfig(globally=False)
        summary, failures = run_suites(context, tables)
        if docs_dir is not None:
            write_data_docs(context, docs_dir)
    if report is not None:
        atomic_write_json(report, summary, sort_keys=True)
    if failures:
        logger.error("data validation failed: %d expectation(s)", len(failures))
        raise DataValidationError(failures)
    logger.info("data validation passed: %d files", len(summary))
    return summary
