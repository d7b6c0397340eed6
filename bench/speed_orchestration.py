"""Speed, part `orchestration`: a no-change `dvc repro` (skipped with a note when the pipeline is not reproduced or
not up to date: a benchmark never trains), and a Prefect flow run of one stage (evaluating the base model on STS-B
dev) against calling the same function directly, on a temporary Prefect server in a temporary PREFECT_HOME.
Run by bench/speed.py (``--parts orchestration``).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import common

log = logging.getLogger("bench.speed.orchestration")

TITLE = "Orchestration overhead"


def _venv_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.setdefault("HF_HUB_OFFLINE", "1")
    return env


def bench_dvc(project_dir: Path, repeats: int) -> dict[str, Any]:
    project_dir = Path(project_dir).resolve()
    if not (project_dir / "dvc.lock").is_file():
        return {
            "skipped": f"{project_dir}/dvc.lock is absent: the pipeline has not been reproduced, so a no-change "
            "`dvc repro` cannot be measured"
        }
    dvc = [sys.executable, "-m", "dvc"]
    started = time.perf_counter()
    status = subprocess.run(
        [*dvc, "status", "--json"], cwd=project_dir, capture_output=True, text=True, env=_venv_env()
    )
    status_s = time.perf_counter() - started
    if status.returncode != 0:
        return {
            "skipped": f"`dvc status` failed ({status.returncode}): {status.stderr.strip()[-400:]}",
            "status_s": status_s,
        }
    try:
        changed = json.loads(status.stdout.strip() or "{}")
    except json.JSONDecodeError:
        changed = {"unparsed": status.stdout.strip()[-400:]}
    if changed:
        # A repro now would run real stages (possibly hours of training): never do that from a benchmark.
        return {
            "skipped": "the pipeline is not up to date (`dvc status` lists changes in "
            f"{', '.join(sorted(changed))[:300]}); run `dvc repro` first",
            "status_s": status_s,
        }
    runs = []
    for _ in range(repeats):
        started = time.perf_counter()
        proc = subprocess.run([*dvc, "repro"], cwd=project_dir, capture_output=True, text=True, env=_venv_env())
        runs.append(time.perf_counter() - started)
        if proc.returncode != 0:
            return {
                "skipped": f"`dvc repro` failed ({proc.returncode}): {proc.stderr.strip()[-400:]}",
                "status_s": status_s,
            }
        log.info("no-change dvc repro: %.2f s", runs[-1])
    return {"project_dir": str(project_dir), "status_s": status_s, "repro_s": common.median(runs), "repro_runs_s": runs}


def evaluate_stage(model: str, sts_dir: str, pooling: str, max_length: int, batch_size: int, device: str) -> dict:
    """The stage both ways run: `jtcse evaluate` of a model on STS-B dev, as a library call."""
    from jtcse.encoding import TowerEncoder
    from jtcse.evaluation.sts import DEV_TASKS, STSEvaluator

    encoder = TowerEncoder.from_pretrained(model, pooling, max_length, device)
    return STSEvaluator(sts_dir, {"stsb_dev": DEV_TASKS["stsb_dev"]}, batch_size=batch_size)(encoder)


def bench_prefect(settings, *, repeats: int, dev_pairs: int | None) -> dict[str, Any]:
    from jtcse.formats import resolve_model_path

    home = tempfile.TemporaryDirectory(prefix="jtcse-prefect-")
    sts = tempfile.TemporaryDirectory(prefix="jtcse-stsdev-")
    saved = {
        k: os.environ.get(k)
        for k in ("PREFECT_HOME", "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "PREFECT_API_URL")
    }
    os.environ["PREFECT_HOME"] = home.name
    os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "120"
    os.environ.pop("PREFECT_API_URL", None)
    try:
        dev_file = Path(settings.data.sts_dir) / "stsb.dev.tsv"
        lines = dev_file.read_text(encoding="utf-8").splitlines()
        if dev_pairs:
            lines = lines[: dev_pairs + 1]
        (Path(sts.name) / "stsb.dev.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
        kwargs = dict(
            model=resolve_model_path(settings.model.base),
            sts_dir=sts.name,
            pooling=settings.model.pooling,
            max_length=settings.evaluate.max_length,
            batch_size=settings.evaluate.batch_size,
            device=settings.runtime.device,
        )

        started = time.perf_counter()
        from prefect import flow, task
        from prefect.cache_policies import NO_CACHE
        from prefect.testing.utilities import prefect_test_harness

        import_s = time.perf_counter() - started
        logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per API request otherwise

        @task(name="evaluate", cache_policy=NO_CACHE, persist_result=False)
        def evaluate_task(**kw):
            return evaluate_stage(**kw)

        @flow(name="bench-evaluate", persist_result=False)
        def evaluate_flow(**kw):
            return evaluate_task(**kw)

        @flow(name="bench-noop", persist_result=False)
        def noop_flow():
            return None

        direct_first, result = common.time_call(lambda: evaluate_stage(**kwargs))  # warms file caches and imports
        started = time.perf_counter()
        with prefect_test_harness(server_startup_timeout=120):
            server_s = time.perf_counter() - started
            first_flow_s = common.time_call(noop_flow)[0]  # flow registration and the client's first contact
            direct, flowed = [], []
            for r in range(repeats):
                d, direct_result = common.time_call(lambda: evaluate_stage(**kwargs))
                f, flow_result = common.time_call(lambda: evaluate_flow(**kwargs))
                direct.append(d)
                flowed.append(f)
                log.info("prefect repeat %d/%d: direct %.2f s, flow %.2f s", r + 1, repeats, d, f)
            noop = [common.time_call(noop_flow)[0] for _ in range(repeats)]
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        home.cleanup()
        sts.cleanup()
    d, f = common.median(direct), common.median(flowed)
    return {
        "stage": "evaluate the base model on STS-B dev" + (f" (first {dev_pairs} pairs)" if dev_pairs else ""),
        "pairs": len(lines) - 1,
        "stsb_dev": result.get("stsb_dev"),
        "same_result": abs(flow_result["stsb_dev"] - direct_result["stsb_dev"]) < 1e-9,
        "prefect_import_s": import_s,
        "server_startup_s": server_s,
        "first_flow_run_s": first_flow_s,
        "direct_first_call_s": direct_first,
        "direct_s": d,
        "flow_s": f,
        "overhead_s": f - d,
        "overhead_pct": 100.0 * (f - d) / d,
        "empty_flow_s": common.median(noop),
        "repeats": repeats,
        "direct_runs_s": direct,
        "flow_runs_s": flowed,
    }


def measure(ctx) -> dict[str, Any]:
    result: dict[str, Any] = {"dvc": bench_dvc(Path(ctx.project_dir), ctx.sizes["dvc_repeats"])}
    try:
        result["prefect"] = bench_prefect(
            ctx.settings, repeats=ctx.sizes["flow_repeats"], dev_pairs=ctx.sizes["dev_pairs"]
        )
    except ImportError as err:  # pragma: no cover - prefect is a project dependency
        result["prefect"] = {"skipped": f"prefect not importable: {err}"}
    return result


def render(o: dict) -> list[str]:
    lines = []
    dvc = o["dvc"]
    if "skipped" in dvc:
        lines.append(f"- `dvc repro` (no change): skipped: {dvc['skipped']}.")
    else:
        lines.append(
            f"- `dvc repro` with nothing changed: **{dvc['repro_s']:.2f} s** (median of "
            f"{len(dvc['repro_runs_s'])}; `dvc status` {dvc['status_s']:.2f} s) in `{dvc['project_dir']}`."
        )
    pf = o["prefect"]
    if "skipped" in pf:
        lines.append(f"- Prefect: skipped: {pf['skipped']}.")
    else:
        lines += [
            f"- Prefect flow (one task) vs direct call of the same stage ({pf['stage']}, {pf['pairs']} pairs): "
            f"direct {pf['direct_s']:.2f} s, flow {pf['flow_s']:.2f} s: **overhead {pf['overhead_s']:.2f} s = "
            f"{pf['overhead_pct']:.1f} %** of the stage (median of {pf['repeats']}; same result: "
            f"{pf['same_result']}). An empty flow run: {pf['empty_flow_s']:.2f} s.",
            f"- Not in the per-run overhead: temporary server start-up {pf['server_startup_s']:.1f} s, first "
            f"flow run {pf['first_flow_run_s']:.2f} s, `import prefect` {pf['prefect_import_s']:.1f} s.",
        ]
    return lines


def bars(o: dict) -> list[tuple[str, float]]:
    pf = o.get("prefect", {})
    return [("Prefect flow / direct time", pf["flow_s"] / pf["direct_s"])] if "overhead_s" in pf else []
