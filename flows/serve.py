"""Serve the retrain flow on a cron schedule against a running Prefect server.

    prefect server start --host 127.0.0.1 --port 4200 &
    export PREFECT_API_URL=http://127.0.0.1:4200/api
    python -m flows.serve            # schedule from params.yaml retrain.cron
"""

from __future__ import annotations

import argparse
from pathlib import Path

from prefect.schedules import Cron

from flows.retrain import retrain
from jtcse.config import load_settings


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--project-dir", default=".", help="the jtcse project (dvc.yaml, params.yaml)")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--name", default="scheduled-retrain", help="deployment name")
    parser.add_argument("--cron", help="override retrain.cron")
    parser.add_argument("--no-pull", action="store_true", help="do not `dvc pull` before each run")
    args = parser.parse_args(argv)
    root = Path(args.project_dir).resolve()
    settings = load_settings(root / args.params).retrain
    retrain.serve(
        name=args.name,
        schedules=[Cron(args.cron or settings.cron, timezone=settings.timezone)],
        parameters={"project_dir": str(root), "params_file": args.params, "pull": not args.no_pull},
        description="Retrain JTCSE on the DVC-versioned data; promote only a better model.",
    )


if __name__ == "__main__":
    main()
