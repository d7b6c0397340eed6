"""The retrain deployment documents its parameters, carries tags, and runs once per DVC workspace at a time."""

from __future__ import annotations

import threading
import time

import pytest
import yaml


def test_deployment_has_parameter_descriptions_tags_and_a_limit(tmp_path):
    from flows.serve import build_deployment, parse_args

    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"retrain": {"cron": "0 4 * * 0"}}))
    deployment = build_deployment(parse_args(["--project-dir", str(tmp_path), "--name", "t"]))
    assert deployment.tags == ["jtcse", "retrain"]
    assert deployment.concurrency_limit == 1
    properties = deployment._parameter_openapi_schema.properties
    assert set(properties) == {"project_dir", "params_file", "pull"}
    assert "DVC workspace" in properties["project_dir"]["description"]
    assert "retrain" in properties["params_file"]["description"]
    assert "dvc pull" in properties["pull"]["description"]
    assert deployment.parameters == {"project_dir": str(tmp_path), "params_file": "params.yaml", "pull": True}
    assert [s.schedule.cron for s in deployment.schedules] == ["0 4 * * 0"]


def test_workspace_names_are_one_per_resolved_path(tmp_path):
    from flows.retrain import workspace_limit_name

    assert workspace_limit_name(tmp_path) == workspace_limit_name(tmp_path / "sub" / "..")
    assert workspace_limit_name(tmp_path / "a") != workspace_limit_name(tmp_path / "b")
    assert workspace_limit_name(tmp_path / "a").startswith("jtcse-retrain-a-")


@pytest.mark.slow
def test_a_second_retrain_of_the_same_workspace_waits_then_fails(tmp_path, prefect_harness):
    from flows.retrain import WorkspaceBusy, retrain, workspace_slot

    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"retrain": {"workspace_wait_seconds": 1}}))
    held, release = threading.Event(), threading.Event()

    def first_retrain():  # holds the workspace like a running retrain
        with workspace_slot(tmp_path, 5):
            held.set()
            release.wait(60)

    holder = threading.Thread(target=first_retrain)
    holder.start()
    try:
        assert held.wait(60), "the first holder never got the slot"
        started = time.monotonic()
        with pytest.raises(WorkspaceBusy, match="another retrain holds this workspace .* gave up after 1 s"):
            retrain(project_dir=str(tmp_path), pull=False)
        assert time.monotonic() - started < 30
        with workspace_slot(tmp_path / "other", 1):  # another workspace is not blocked
            pass
    finally:
        release.set()
        holder.join(60)
    with workspace_slot(tmp_path, 5) as name:  # released: the next retrain gets it
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            limit = client.read_global_concurrency_limit_by_name(name)
        assert limit.limit == 1 and limit.active_slots == 1
