"""training.compare on a real local MLflow store holding evaluation runs logged by training.evaluate."""

from __future__ import annotations

import time

import mlflow
import pytest
from PIL import Image

from svdpipe.config_schema import MlflowConfig, SvdpipeConfig
from svdpipe.tracking import start_run
from training.compare import axis_range, better_direction, compare_stages, compare_variants, log_comparison
from training.evaluate import EvalResult, log_evaluation


@pytest.fixture(scope="module")
def cfg(tmp_path_factory) -> SvdpipeConfig:
    tmp = tmp_path_factory.mktemp("compare")
    return SvdpipeConfig(mlflow=MlflowConfig(tracking_uri=f"sqlite:///{tmp}/mlflow.db", experiment="cmp"))


def _log(cfg, variant: str, val_loss: float, dv: str, fd: float = 1.0, eval_set: str = "E1", tc: float = 0.9,
         motion: float = 1.0) -> str:
    metrics = {"val_loss": val_loss, "se/val_loss": 0.01, "n/val_loss": 4.0, "val_loss/sigma_1": val_loss * 2,
               "fd_clip-tiny": fd, "n/fd_clip-tiny": 4.0, "motion_fidelity": 0.5, "temporal_consistency": tc,
               "motion_magnitude": motion, "motion_magnitude_real": 1.0, "n_videos": 4.0}
    result = EvalResult(variant, 3, metrics, [], 4, details={"feature_extractor": "clip-tiny"}, eval_set=eval_set)
    run_id = log_evaluation(result, cfg, variant, dv, f"model-{variant}")
    time.sleep(0.01)  # distinct start times
    return run_id


@pytest.fixture(scope="module")
def runs(cfg) -> dict[str, str]:
    ids = {
        "svd_old": _log(cfg, "svd", 0.9, "dv1"),
        "uncurated": _log(cfg, "uncurated", 0.8, "dv-u", fd=float("nan"), tc=0.999, motion=0.0),  # frozen samples
        "svd_new": _log(cfg, "svd", 0.5, "dv2"),
    }
    with start_run(cfg, "train", {"stage": "train3", "curation_variant": "svd"}):
        mlflow.log_metric("val_loss", 0.01)  # not an evaluation run: ignored
    return ids


def test_newest_eval_run_per_variant_on_one_eval_set(cfg, runs, tmp_path):
    c = compare_variants(cfg, out_dir=tmp_path)
    t = c.table.set_index("variant")
    assert list(t.index) == ["svd", "uncurated"] and c.eval_set == "E1" and set(t["eval_set"]) == {"E1"}
    assert t.loc["svd", "run_id"] == runs["svd_new"] and t.loc["svd", "dataset_version"] == "dv2"
    assert t.loc["svd", "val_loss"] == pytest.approx(0.5) and t.loc["uncurated", "val_loss"] == pytest.approx(0.8)
    assert t.loc["svd", "model_run_id"] == "model-svd" and t.loc["svd", "evaluated_stage"] == "3"
    assert c.metrics[0] == "val_loss" and c.metrics[-1] == "n_videos" and "val_loss/sigma_1" in c.metrics
    assert not any(m.startswith(("se/", "n/")) for m in c.metrics) and t.loc["svd", "se/val_loss"] == 0.01
    assert "| svd" in c.markdown and "val_loss (↓)" in c.markdown and "motion_fidelity (↑)" in c.markdown
    assert "0.5 ± 0.01 *" in c.markdown and "compared on eval_set E1" in c.notes[0]
    assert "evaluation set E1" in c.markdown
    assert all(" E1 " in line for line in c.markdown.splitlines() if line.startswith(("| svd", "| uncurated")))
    assert c.png.exists() and c.png.read_bytes()[:4] == b"\x89PNG"
    assert Image.open(c.png).size[0] <= 960  # fits the Dagster metadata dialog unscaled


def test_a_static_sample_never_wins_temporal_consistency(cfg, runs, tmp_path):
    c = compare_variants(cfg, out_dir=tmp_path)
    assert c.best["temporal_consistency"] == "svd" and c.best["val_loss"] == "svd"
    assert "0.999 (static)" in c.markdown


def test_runs_of_another_eval_set_are_not_compared(cfg, runs, tmp_path):
    other = _log(cfg, "svd", 0.1, "dv3", eval_set="E2")  # newest: compares E2, where only svd was evaluated
    c = compare_variants(cfg, out_dir=tmp_path)
    assert c.eval_set == "E2" and c.table["run_id"].tolist() == [other]
    assert any("other evaluation sets: uncurated" in n for n in c.notes)
    back = compare_variants(cfg, out_dir=tmp_path, eval_set="E1")
    assert back.table["run_id"].tolist() == [runs["svd_new"], runs["uncurated"]]
    untagged = _log(cfg, "svd", 0.05, "dv4", eval_set="")
    c = compare_variants(cfg, out_dir=tmp_path)
    assert untagged not in c.table["run_id"].tolist() and any("without an eval_set" in n for n in c.notes)


def test_log_comparison_run(cfg, runs, tmp_path):
    c = compare_variants(cfg, out_dir=tmp_path, eval_set="E1")
    run_id = log_comparison(c, cfg)
    client = mlflow.MlflowClient(cfg.mlflow.tracking_uri)
    run = client.get_run(run_id)
    assert run.data.tags["stage"] == "compare" and run.data.tags["variants"] == "svd,uncurated"
    assert run.data.tags["eval_set"] == "E1" and run.data.tags["best.val_loss"] == "svd"
    assert {a.path for a in client.list_artifacts(run_id)} == {"comparison.csv", "comparison.md", "comparison.png"}
    csv = mlflow.artifacts.load_text(f"runs:/{run_id}/comparison.csv")
    assert runs["svd_new"] in csv and runs["svd_old"] not in csv
    # The comparison run itself is not an evaluation run: comparing again gives the same table.
    again = compare_variants(cfg, out_dir=tmp_path, eval_set="E1")
    assert again.table["run_id"].tolist() == c.table["run_id"].tolist()


def _log_base(cfg, variant: str, val_loss: float, eval_set: str = "B1") -> str:
    """An evaluation run of a Stage II base model, as training.evaluate_base makes it (no sample metrics)."""
    metrics = {"val_loss": val_loss, "se/val_loss": 0.02, "n/val_loss": 4.0, "val_loss/sigma_1": val_loss,
               "n_val_clips": 4.0, "n_videos": 2.0}
    run_id = log_evaluation(EvalResult(variant, 2, metrics, [], 2, eval_set=eval_set), cfg, variant, f"dv-{variant}",
                            f"base-{variant}")
    time.sleep(0.01)
    return run_id


def test_base_models_are_compared_beside_stage_iii_not_mixed_in(cfg, runs, tmp_path):
    before = compare_variants(cfg, out_dir=tmp_path / "before")
    base = {v: _log_base(cfg, v, loss) for v, loss in (("uncurated", 0.7), ("svd", 0.6))}  # the newest runs now
    stage3, stage2 = compare_stages(cfg, out_dir=tmp_path / "both")
    # Stage III's comparison is what it was: base evaluations are neither its newest runs nor its eval set.
    assert stage3.stage == 3 and stage3.eval_set == before.eval_set
    assert stage3.table["run_id"].tolist() == before.table["run_id"].tolist()
    assert stage2.stage == 2 and stage2.eval_set == "B1" and set(stage2.table["evaluated_stage"]) == {"2"}
    assert stage2.table.set_index("variant")["run_id"].to_dict() == base and stage2.best["val_loss"] == "svd"
    assert stage2.metrics[0] == "val_loss" and "fd_clip-tiny" not in stage2.metrics
    assert stage3.markdown.startswith("### Stage III") and stage2.markdown.startswith("### Stage II base models")
    assert "0.6 ± 0.02 *" in stage2.markdown and stage2.png.name == "comparison_stage2.png"
    assert stage3.png.name == "comparison.png" and stage2.png.exists()

    client = mlflow.MlflowClient(cfg.mlflow.tracking_uri)
    run = client.get_run(log_comparison([stage3, stage2], cfg))
    t = run.data.tags
    assert t["eval_set"] == stage3.eval_set and t["stage2.eval_set"] == "B1" and t["stage2.best.val_loss"] == "svd"
    assert t["best.val_loss"] == stage3.best["val_loss"] and set(t["compared_runs"].split(",")) >= set(base.values())
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {
        "comparison.csv", "comparison.md", "comparison.png", "comparison_stage2.png"}
    md = mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/comparison.md")
    assert md.index("### Stage III") < md.index("### Stage II base models")
    csv = mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/comparison.csv")
    assert all(base[v] in csv for v in base)


def test_empty_experiment(cfg, tmp_path):
    c = compare_variants(cfg, experiment="nothing-here", out_dir=tmp_path)
    assert c.table.empty and c.png is None and "no stage=eval runs" in c.notes[0]
    assert compare_stages(cfg, experiment="nothing-here", out_dir=tmp_path) == []


def test_axis_starts_near_close_figures_and_at_zero_otherwise():
    lo, hi, from_zero = axis_range([0.81, 0.83], [0.005, 0.004])
    assert not from_zero and 0.78 < lo < 0.805 and 0.834 < hi < 0.86  # a 2 % difference fills the panel
    assert axis_range([0.2, 0.9], [0.0, 0.0])[2]  # far apart: from zero
    assert axis_range([-0.4, 0.6], [0.1, 0.1])[2] and axis_range([-0.4, 0.6], [0.1, 0.1])[0] < -0.5
    assert not axis_range([-0.52, -0.5], [float("nan"), 0.01])[2]  # close negatives zoom too
    assert axis_range([float("nan")], [float("nan")]) == (0.0, 1.0, True)


def test_better_direction():
    assert better_direction("fvd") == better_direction("val_loss/sigma_0.02") == "lower"
    assert better_direction("temporal_consistency") == better_direction("motion_fidelity") == "higher"
    assert better_direction("n_videos") is None and better_direction("motion_magnitude") is None
