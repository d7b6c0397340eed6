"""The root `jtcse` command line (jtcse/cli.py): fast help, a help text on every option, `python -m jtcse`, and no
module but the entry points imports the root. The commands have their tests in tests/commands/."""

from __future__ import annotations

import argparse
import ast
import os
import subprocess
import sys
import time

from tests.conftest import REPO

HEAVY = ("torch", "transformers", "sentence_transformers", "great_expectations", "prefect", "optuna", "scipy")


def env() -> dict:
    return dict(os.environ, PYTHONPATH=str(REPO))


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def test_help_and_version_import_no_heavy_library():
    code = (
        "import sys; from jtcse.cli import build_parser; build_parser(); "
        f"print([m for m in {HEAVY!r} if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env(), capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    started = time.perf_counter()
    version = subprocess.run(
        [sys.executable, "-m", "jtcse.cli", "--version"], env=env(), capture_output=True, text=True, check=True
    )
    assert version.stdout.strip() == "jtcse 0.1.0"
    assert time.perf_counter() - started < 5  # about 0.3 s; torch alone would take 4 s on this machine


def test_every_option_has_plain_help_text():
    from jtcse.cli import build_parser

    parser = build_parser()
    commands = subparsers(parser)
    assert {
        "validate",
        "train-tower",
        "train",
        "distill",
        "evaluate",
        "encode",
        "similarity",
        "package",
        "report",
        "tune",
        "tune-worker",
        "tune-report",
        "tune-apply",
    } <= set(commands)
    missing, markup = [], []
    for name, sub in {"jtcse": parser, **commands}.items():
        for action in sub._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            if not action.help:
                missing.append(f"{name} {'/'.join(action.option_strings) or action.dest}")
        text = sub.format_help()
        if any(mark in text for mark in ("``", ":func:", ":class:", ":mod:", ":meth:", ".. ")):
            markup.append(name)
    assert not missing, f"options without help: {missing}"
    assert not markup, f"RST markup in the help of: {markup}"


def test_no_module_imports_the_root_command_line():
    """The root imports the commands (jtcse/commands/), never the reverse; only the entry points import it."""
    entry_points = {REPO / "jtcse" / "__main__.py"}  # and pyproject's [project.scripts] jtcse = "jtcse.cli:main"
    offenders = []
    for path in sorted(
        [*(REPO / "jtcse").rglob("*.py"), *(REPO / "flows").rglob("*.py"), *(REPO / "bench").rglob("*.py")]
    ):
        if path in entry_points:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [f"{node.module}.{alias.name}" for alias in node.names] if node.module else []
            else:
                continue
            if any(name == "jtcse.cli" or name.startswith("jtcse.cli.") for name in names):
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert offenders == []


def test_python_dash_m_jtcse_is_the_jtcse_command():
    """What torchrun (runtime.nproc_per_node > 1) and `jtcse tune`'s worker processes start."""
    from jtcse.tuning import worker_command

    version = subprocess.run(
        [sys.executable, "-m", "jtcse", "--version"], env=env(), capture_output=True, text=True, timeout=60
    )
    assert (version.returncode, version.stdout.strip()) == (0, "jtcse 0.1.0")
    command = worker_command("tune/study_settings.yaml", tower_a="a", tower_b="b", worker_index=1, workers=2)
    assert command == [
        sys.executable,
        "-m",
        "jtcse",
        "tune-worker",
        "--params",
        "tune/study_settings.yaml",
        "--tower-a",
        "a",
        "--tower-b",
        "b",
        "--worker-index",
        "1",
        "--workers",
        "2",
        "--no-create",
    ]
    bad = subprocess.run(
        [*command[:3], "tune-worker", "--params", "no/such/params.yaml", "--no-create"],
        env=env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith("jtcse: error: no/such/params.yaml")
