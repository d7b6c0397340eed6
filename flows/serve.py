"""Serve the retrain flow on a cron schedule against a running Prefect server.

export PREFECT_API_URL=http://127.0.0.1:4200/api    # first: the server and the UI both read it
prefect server start --host 127.0.0.1 --port 4200 &
python -m flows.serve            # schedule from params.yaml retrain.cron
"""

from __future__ import annotations

import argparse
from pathlib import Path

from prefect import serve
from prefect.schedules import Cron

from flows.retrain import TAGS, retrain
from jtcse.config import load_settings


def build_deployment(args: argparse.Namespace):
    """The scheduled deployment: parameters documented (from the flow's docstring), tagged, one run at a time."""
    root = Path(args.project_dir).resolve()
    settings = load_settings(root / args.params).retrain
    return retrain.to_deployment(
        name=args.name,
        schedules=[Cron(args.cron or settings.cron, timezone=settings.timezone)],
        parameters={"project_dir": str(root), "params_file": args.params, "pull": not args.no_pull},
        description="Retrain JTCSE on the DVC-versioned data; promote only a better model.",
        tags=TAGS,
        # A scheduled run that finds the previous one still running waits for it; the flow's own per-workspace
        # limit also covers runs started elsewhere (by hand, another deployment).
        concurrency_limit=1,
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--project-dir", default=".", help="the jtcse project (dvc.yaml, params.yaml)")
    parser.add_argument("--params", default="params.yaml", help="settings file, relative to --project-dir")
    parser.add_argument("--name", default="scheduled-retrain", help="deployment name")
    parser.add_argument("--cron", help="override retrain.cron")
    parser.add_argument("--no-pull", action="store_true", help="do not `dvc pull` before each run")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    serve(build_deployment(parse_args(argv)))


if __name__ == "__main__":
    main()
