"""A stage's MLflow run across a kill: continued from the checkpoint, or ended as KILLED when there is none."""

import mlflow

from svdpipe import tracking
from svdpipe.config import load_config
from svdpipe.storage import open_storage
from training.checkpoints import for_stage
from training.stage_report import RUN_FILE, StageReport


def _killed_run(tmp_path):
    """A stage's config and checkpoints, and the MLflow run of a stage process killed after logging steps 1..3
    (step 3 twice: it was run again after an earlier resume), as the process left it: RUNNING."""
    cfg = load_config("tiny", str(tmp_path / "root"), [f"mlflow.tracking_uri=sqlite:///{tmp_path}/m.db"])
    client = mlflow.MlflowClient(tracking.tracking_uri(cfg))
    run = client.create_run(tracking.ensure_experiment(cfg))
    for step, loss in ((1, 0.9), (2, 0.8), (3, 0.75), (3, 0.7)):
        client.log_metric(run.info.run_id, "loss", loss, step=step)
    ckpt = for_stage(open_storage(cfg.data_root), "uncurated", 1)
    ckpt.write_json(RUN_FILE, {"run_id": run.info.run_id})
    return cfg, ckpt, client, run.info.run_id


def _report(cfg, ckpt, start: int) -> StageReport:
    return StageReport(cfg, "uncurated", 1, "v1", ckpt, 8, start, progress=False)


def test_a_resumed_stage_continues_its_run_and_its_losses_from_step_1(tmp_path):
    cfg, ckpt, client, killed = _killed_run(tmp_path)
    with _report(cfg, ckpt, start=2) as report:  # resumed from the step-2 checkpoint: steps 3.. run again
        assert report.run_id == killed and report.losses == [(1, 0.9), (2, 0.8)]


def test_a_stage_killed_before_its_first_checkpoint_ends_its_run_as_killed(tmp_path):
    cfg, ckpt, client, killed = _killed_run(tmp_path)
    with _report(cfg, ckpt, start=0) as report:  # nothing to resume: a new run, the abandoned one ended
        assert report.run_id != killed and report.losses == []
    assert client.get_run(killed).info.status == "KILLED"
    assert ckpt.read_json(RUN_FILE) == {"run_id": report.run_id}
