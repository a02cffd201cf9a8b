import subprocess
import sys
from pathlib import Path

import dagster as dg

from orchestration.definitions import defs

REPO = Path(__file__).resolve().parents[2]


def test_dagster_definitions_validate(tmp_path):
    env = {"DAGSTER_HOME": str(tmp_path), "PATH": str(Path(sys.executable).parent)}
    proc = subprocess.run([sys.executable, "-m", "dagster", "definitions", "validate", "-m", "orchestration.definitions"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Validation successful" in proc.stdout + proc.stderr


def test_asset_graph_has_the_ingestion_chain():
    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert {"ingested_batch", "videos", "clip_scores", "clips", "curated_dataset"} <= keys
    assert graph.get(dg.AssetKey("videos")).parent_keys == {dg.AssetKey("ingested_batch")}
    assert isinstance(graph.get(dg.AssetKey("ingested_batch")).partitions_def, dg.DynamicPartitionsDefinition)
    assert defs.resolve_sensor_def("new_videos_sensor") is not None


def test_base_evaluation_scores_each_variants_stage_ii_model_and_feeds_the_comparison():
    graph = defs.resolve_asset_graph()
    base, key = graph.get(dg.AssetKey("base_evaluation")), dg.AssetKey("base_evaluation")
    assert base.parent_keys == {dg.AssetKey("video_model")} and base.group_name == "evaluation"
    assert base.partitions_def == graph.get(dg.AssetKey("evaluation")).partitions_def  # one per variant
    assert base.partitions_def.get_partition_keys() == graph.get(dg.AssetKey("curated_dataset")).partitions_def \
        .get_partition_keys()
    assert graph.get(dg.AssetKey("variant_comparison")).parent_keys == {dg.AssetKey("evaluation"), key}
    selected = {k.to_user_string() for k in defs.resolve_job_def("evaluate").asset_layer.executable_asset_keys}
    assert selected == {"evaluation", "base_evaluation", "variant_comparison"}
