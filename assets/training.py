"""Training assets: clip latents, then the three stages, one partition per curation variant.

Each stage runs as its own process (``training.run`` through ``training.launch.for_config``: python, or torchrun
for several processes or nodes) under Dagster Pipes, which streams its logs and reports its materialization (MLflow
run, losses, loss curve). DeepSpeed's process-global state is why a stage never runs inside the Dagster
process itself.
"""

import dagster as dg

from assets import guards
from assets.curation import curated_dataset
from assets.partitions import variants
from assets.resources import SvdpipeResource
from svdpipe.processes import child_env
from training.launch import for_config

# The Dagster run queue (infra/dagster.postgres.yaml) limits concurrent runs with this tag.
TRAIN_TAGS = {"svdpipe/stage": "train"}


@dg.asset(
    partitions_def=variants,
    deps=[curated_dataset],
    group_name="training",
    description="`latents/<variant>/<H>x<W>x<F>/`: autoencoder latents, noise-augmented conditioning latents, "
    "CLIP image embeddings and caption contexts of every curated clip, once per training resolution.",
)
def clip_latents(context: dg.AssetExecutionContext, svdpipe: SvdpipeResource) -> dg.MaterializeResult:
    from training.latents import build_latents

    from svdpipe.dvc_hash import dvc_hashes

    v = context.partition_key
    guards.curated_clips(svdpipe.storage, v)
    built = build_latents(svdpipe.storage, v, svdpipe.config, progress=True)
    first = next(iter(built.values()))
    hashes = dvc_hashes(svdpipe.storage, {"curated": f"curated/{v}", "latents": f"latents/{v}"})
    return dg.MaterializeResult(metadata={
        "dvc_hashes": dg.MetadataValue.json(hashes),
        "dataset_version": first["fingerprint"]["dataset_version"],
        "resolutions": dg.MetadataValue.json(sorted(built)),
        "clips": first["clips"],
        "val_clips": first["val_clips"],
        "skipped_clips": dg.MetadataValue.json({k: v["skipped"] for k, v in built.items() if v["skipped"]}),
        "encoders": dg.MetadataValue.json(first["encoders"]),
        "path": dg.MetadataValue.path(svdpipe.storage.uri(f"latents/{context.partition_key}")),
    })


def _stage_asset(stage: int, name: str, upstream, description: str):
    @dg.asset(
        name=name,
        partitions_def=variants,
        deps=[upstream, clip_latents] if stage > 1 else [clip_latents],
        group_name="training",
        op_tags=TRAIN_TAGS,
        description=description,
    )
    def _asset(
        context: dg.AssetExecutionContext,
        svdpipe: SvdpipeResource,
        pipes_subprocess_client: dg.PipesSubprocessClient,
    ) -> dg.MaterializeResult:
        cfg = svdpipe.config
        guards.latents(svdpipe.storage, context.partition_key)
        if stage > 1:
            guards.model(svdpipe.storage, context.partition_key, stage - 1)
        # This node's launcher; with training.nnodes > 1 the other nodes start theirs (docs/deployment.md).
        cmd = for_config(
            cfg, stage, context.partition_key, profile=svdpipe.profile, data_root=svdpipe.data_root,
            params_file=svdpipe.params_file, overrides=svdpipe.overrides,
        )
        context.log.info("launching " + " ".join(cmd))
        tags = {"dagster.run_id": context.run.run_id, "dagster.asset": name,
                "dagster.partition": context.partition_key}
        # The stage dies with this process (svdpipe.processes): a killed `svdpipe train` leaves nothing training.
        return pipes_subprocess_client.run(
            command=cmd, context=context, extras={"mlflow_tags": tags}, env=child_env()
        ).get_materialize_result()

    return _asset


image_model = _stage_asset(
    1, "image_model", None, "`models/<variant>/stage1`: Stage I, the text-to-image UNet (SD 2.1 architecture)."
)
video_model = _stage_asset(
    2, "video_model", image_model, "`models/<variant>/stage2`: Stage II, the image model inflated and video-pretrained."
)
finetuned_model = _stage_asset(
    3, "finetuned_model", video_model,
    "`models/<variant>/stage3`: Stage III, high-resolution finetuning; a StableVideoDiffusionPipeline folder.",
)
