"""The README's path in a real browser: after the demo (its data root recorded in the project settings), the
UI serves that data root; the Materialize button on `evaluation[svd]` launches a run that succeeds on it."""

from __future__ import annotations

import json
import time

import pytest

from test_dagster_ui import _open, _page_text

# Long only when it builds the shared `trained` fixture itself (the chain on CPU); the test proper is minutes.
pytestmark = pytest.mark.timeout(1800)

_RUNS = """{ runsOrError { ... on Runs { results { runId status tags { key value }
  assetSelection { path } } } } }"""


def _run_messages(ui, run_id: str) -> str:
    query = ('{ logsForRun(runId: "%s") { ... on EventConnection { events { __typename '
             '... on MessageEvent { message } ... on ExecutionStepFailureEvent { error { message } } } } } }' % run_id)
    events = ui.graphql(query)["data"]["logsForRun"].get("events", [])
    return "\n".join((e.get("error") or {}).get("message") or e.get("message") or "" for e in events)[-3000:]


def test_materialize_evaluation_from_the_ui_runs_on_the_demo_data(demo_ui, page, shots):
    url = f"{demo_ui.url}/assets/evaluation"
    _open(page, url)
    where = lambda shot: f"at {url}; screenshot {shot}; page text: {_page_text(page)}"  # noqa: E731
    try:
        # The asset says which data root it reads.
        page.get_by_text(str(demo_ui.root), exact=False).first.wait_for(timeout=60_000)
        page.get_by_role("button", name="Materialize", exact=False).first.click()
        page.get_by_text("Launch runs to materialize evaluation").wait_for(timeout=30_000)
        page.get_by_text("Select a partition or create one").click()
        page.keyboard.type("svd")
        page.get_by_text("svd", exact=True).first.click()
        launch = page.get_by_role("button", name="Launch 1 run")
        launch.wait_for(timeout=30_000)
        shots.take(page, "dagster_demo_materialize_dialog")
        launch.click()
    except Exception as e:  # noqa: BLE001 - report what the page shows instead
        shot = shots.take(page, "dagster_demo_materialize_FAILED")
        pytest.fail(f"could not launch evaluation[svd] from the UI ({e.__class__.__name__}: {e}) {where(shot)}",
                    pytrace=False)

    deadline, run = time.monotonic() + 600, None
    while time.monotonic() < deadline:
        runs = [r for r in demo_ui.graphql(_RUNS)["data"]["runsOrError"]["results"]
                if {"key": "dagster/from_ui", "value": "true"} in r["tags"]]
        run = runs[0] if runs else None
        if run and run["status"] in ("SUCCESS", "FAILURE", "CANCELED"):
            break
        time.sleep(1)
    assert run is not None, "no run was launched from the UI"
    _open(page, f"{demo_ui.url}/runs/{run['runId']}")
    page.wait_for_timeout(3000)
    shot = shots.take(page, "dagster_demo_evaluation_run")
    assert run["status"] == "SUCCESS", (f"evaluation[svd] launched from the UI ended {run['status']}; "
                                        f"screenshot {shot}; events:\n{_run_messages(demo_ui, run['runId'])}")
    assert {"key": "dagster/partition", "value": "svd"} in run["tags"]

    # It read the demo's data: an evaluation run of svd exists. The model is unchanged since
    # the demo evaluated it, so the UI run reuses that evaluation rather than running it again.
    from mlflow import MlflowClient

    client = MlflowClient(demo_ui.mlflow_uri)
    experiment = client.get_experiment_by_name("svdpipe").experiment_id
    evaluations = client.search_runs(experiment, "tags.stage = 'eval' and tags.curation_variant = 'svd'")
    assert evaluations, "no evaluation run of svd in MLflow"
    evaluated = evaluations[0]
    assert evaluated.info.run_name == "eval svd"
    assert json.loads(json.dumps(evaluated.data.metrics))["val_loss"] > 0
