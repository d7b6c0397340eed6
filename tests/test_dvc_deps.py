"""Every dvc.yaml stage lists, as code deps, every ``jtcse`` module its command runs: editing one of them must make
``dvc status`` report the stage changed, or ``dvc repro`` calls stale models "up to date".

The modules a stage runs are derived statically (``ast``) from the package source, so nothing heavy is imported:

* ``jtcse CMD``: ``jtcse.cli`` and the command module the parser dispatches ``CMD`` to run in full, including the
  imports inside functions (torch, transformers and the library modules are imported there). The root also
  imports every other command family to build its parser: those only define parsers and functions that do not
  run, so they (and what only they import) are not deps of the stage.
* ``python -m jtcse.X``: ``jtcse.X`` runs in full.

"Runs in full" follows every import of the module, wherever it is written (an over-approximation: a stage may
list a module one of its code paths never reaches, never the reverse); ``if TYPE_CHECKING:`` imports never run.
Importing ``jtcse.a.b`` also runs the packages ``jtcse`` and ``jtcse.a``. A dep that is a folder covers every file
below it.
"""

from __future__ import annotations

import ast
import shlex
from functools import cache
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

PACKAGE = REPO / "jtcse"


def _module_file(name: str) -> Path | None:
    base = REPO.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _with_parents(name: str) -> set[str]:
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts) + 1)}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


@cache
def _constants(name: str) -> frozenset[str]:
    """Names module ``name`` binds at module level by plain assignment only (no def, class or import)."""
    tree = ast.parse(_module_file(name).read_text(encoding="utf-8"))
    assigned: set[str] = set()
    other: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Assign):
            assigned |= {t.id for t in node.targets if isinstance(t, ast.Name)}
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            assigned.add(node.target.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            other.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            other |= {(alias.asname or alias.name).split(".")[0] for alias in node.names}
    return frozenset(assigned - other)


@cache
def _imports(name: str) -> frozenset[tuple[str, bool, bool]]:
    """The ``jtcse`` modules that module ``name`` imports, as (module, at module level, runs).

    ``runs`` is False for ``from M import CONSTANT``: nothing of M is called, M is only loaded."""
    path = _module_file(name)
    assert path is not None, name
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[tuple[str, bool, bool]] = set()

    def targets(node: ast.Import | ast.ImportFrom) -> set[tuple[str, bool]]:
        if isinstance(node, ast.Import):
            return {(alias.name, True) for alias in node.names}
        if node.level:
            anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
            base = ".".join(anchor + ([node.module] if node.module else []))
        else:
            base = node.module or ""
        # `from jtcse.evaluation import sts` imports the submodule jtcse.evaluation.sts
        submodules = {f"{base}.{alias.name}" for alias in node.names if _module_file(f"{base}.{alias.name}")}
        names = {alias.name for alias in node.names if f"{base}.{alias.name}" not in submodules}
        runs = bool(names) and not (base.startswith("jtcse") and names <= _constants(base))
        return {(base, runs)} | {(module, True) for module in submodules}

    def visit(node: ast.AST, in_function: bool) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child, in_function)
            return
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            for module, runs in targets(node):
                if module == "jtcse" or module.startswith("jtcse."):
                    assert _module_file(module) is not None, f"{path}: imports {module}, which has no source file"
                    found.add((module, not in_function, runs))
        inside = in_function or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        for child in ast.iter_child_nodes(node):
            visit(child, inside)

    visit(ast.parse(path.read_text(encoding="utf-8"), str(path)), False)
    return frozenset(found)


def _closure(run: set[str], unused: dict[str, set[str]] | None = None) -> dict[str, str | None]:
    """The modules ``run`` reach, each with the module that brought it in (None for a root).

    A module that runs runs what it imports anywhere, at module level or inside its functions. A module only
    loaded (a package whose submodule is imported, a module only a constant is taken from, or what such a module
    imports at module level) runs only its module-level imports. ``unused[m]``: imports of ``m`` not followed."""
    full: set[str] = set()
    loaded: set[str] = set()
    via: dict[str, str | None] = {}
    work: list[tuple[str, bool, str | None]] = [(name, True, None) for name in sorted(run)]
    while work:
        name, runs, importer = work.pop(0)
        if name in full or (not runs and name in loaded):
            continue
        (full if runs else loaded).add(name)
        via.setdefault(name, importer)
        work += [(package, False, name) for package in sorted(_with_parents(name) - {name})]
        for module, at_top, module_runs in sorted(_imports(name)):
            if module not in (unused or {}).get(name, set()) and (at_top or runs):
                work.append((module, runs and module_runs, name))
    return via


def _chain(via: dict[str, str | None], module: str) -> str:
    chain = [module]
    while via[chain[-1]] is not None:
        chain.append(via[chain[-1]])
    return " <- ".join(chain)


@cache
def _command_modules() -> dict[str, str]:
    """``jtcse`` sub-command -> the module of the function the parser dispatches it to."""
    import argparse

    from jtcse.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {name: p.get_default("func").__module__ for name, p in sub.choices.items()}


def _stage_modules(cmd: str) -> dict[str, str | None]:
    words = shlex.split(cmd)
    if words[0] == "jtcse":
        command = next(w for w in words[1:] if not w.startswith("-"))
        dispatched = _command_modules()[command]
        # the root imports every command family to build its parser; only the dispatched one runs
        return _closure(run={"jtcse.cli", dispatched}, unused={"jtcse.cli": set(_command_modules().values())})
    if words[:2] == ["python", "-m"] and words[2].startswith("jtcse"):
        return _closure(run={words[2]})
    pytest.fail(f"cannot tell which jtcse modules this command runs: {cmd!r}")


def _stages() -> dict[str, dict]:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def _code_deps(stage: dict) -> list[str]:
    return [str(d).rstrip("/") for d in stage.get("deps", []) if str(d) == "jtcse" or str(d).startswith("jtcse/")]


def _covered(path: str, deps: list[str]) -> bool:
    return any(path == dep or path.startswith(dep + "/") for dep in deps)


def _relative(module: str) -> str:
    return _module_file(module).relative_to(REPO).as_posix()


STAGES = sorted(_stages())


@pytest.mark.parametrize("stage", STAGES)
def test_every_module_a_stage_runs_is_a_dep(stage):
    spec = _stages()[stage]
    deps = _code_deps(spec)
    via = _stage_modules(spec["cmd"])
    missing = [f"{_relative(m)} ({_chain(via, m)})" for m in sorted(via) if not _covered(_relative(m), deps)]
    assert not missing, f"dvc.yaml stage {stage!r} runs modules its deps do not cover: {'; '.join(missing)}"


@pytest.mark.parametrize("stage", STAGES)
def test_every_code_dep_of_a_stage_is_run_by_it(stage):
    """Deps as tight as is true: a listed module or folder the stage never imports reruns it for nothing.
    A non-Python file (the model card template) is data the stage reads, not checked here."""
    spec = _stages()[stage]
    files = {_relative(m) for m in _stage_modules(spec["cmd"])}
    for dep in _code_deps(spec):
        assert (REPO / dep).exists(), f"dvc.yaml stage {stage!r}: dep {dep} does not exist"
        if (REPO / dep).is_file() and not dep.endswith(".py"):
            continue
        assert any(_covered(f, [dep]) for f in files), f"dvc.yaml stage {stage!r}: dep {dep} is never imported by it"


#: Files a module reads at run time (package data): a stage that runs the module lists them too.
READS = {"jtcse/release/model_card.py": ["jtcse/release/templates/model_card.md.j2"]}


@pytest.mark.parametrize("stage", STAGES)
def test_the_data_files_a_stage_reads_are_deps(stage):
    spec = _stages()[stage]
    deps = _code_deps(spec)
    files = {_relative(m) for m in _stage_modules(spec["cmd"])}
    missing = [f"{data} (read by {module})" for module in sorted(files) for data in READS.get(module, [])]
    missing = [m for m in missing if not _covered(m.split(" ")[0], deps)]
    assert not missing, f"dvc.yaml stage {stage!r} reads files its deps do not cover: {'; '.join(missing)}"


def test_the_derivation_sees_function_local_imports():
    """The heavy imports sit inside functions: the train stages must reach the trainer through them."""
    stages = _stages()
    train = {_relative(m) for m in _stage_modules(stages["train"]["cmd"])}
    assert {
        "jtcse/training/trainer.py",
        "jtcse/data/readers.py",
        "jtcse/evaluation/sts.py",
        "jtcse/config/__init__.py",
    } <= train
    evaluate = {_relative(m) for m in _stage_modules(stages["evaluate"]["cmd"])}
    assert "jtcse/api.py" in evaluate and "jtcse/training/trainer.py" not in evaluate
