"""The ``svdpipe`` command line. Each command materializes the same Dagster assets as the UI does."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import click

INFRA = Path(__file__).resolve().parent.parent / "infra"
# On every run a command executes in its own process: which process (svdpipe.processes.identity), so that a later
# command can tell the run was abandoned when that process was killed.
PROCESS_TAG = "svdpipe/process"


def dagster_home() -> Path:
    """``$DAGSTER_HOME``, else ``<project home>/.dagster``; created with svdpipe's instance config if new."""
    from svdpipe import project

    home = project.dagster_home()
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "dagster.yaml").exists():  # copied whole or not at all: a second command may be starting too
        part = home / f".dagster.yaml.{os.getpid()}.part"
        shutil.copyfile(INFRA / "dagster.yaml", part)
        os.replace(part, home / "dagster.yaml")
    os.environ["DAGSTER_HOME"] = str(home)
    return home


def _instance():
    import dagster as dg

    from assets.concurrency import ensure_pool

    dagster_home()
    instance = dg.DagsterInstance.get()
    obj = click.get_current_context().obj
    if obj:
        ensure_pool(instance, obj["data_root"])
    _fail_abandoned_runs(instance)
    return instance


def _fail_abandoned_runs(instance) -> None:
    """Mark failed the runs whose command ended without finishing them (killed: SIGKILL, OOM, a lost shell).

    A command executes its runs in its own process, so nothing else ever ends them: left STARTED, they would show as
    in progress for ever and count against the run queue's limits (``concurrency`` in infra/dagster.yaml), pools
    included, holding up every run from the UI or a sensor. Only runs of processes known dead on this machine.
    """
    import dagster as dg

    from svdpipe.processes import describe, gone

    active = instance.get_runs(filters=dg.RunsFilter(statuses=[
        dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED,
        dg.DagsterRunStatus.CANCELING]))
    for run in active:
        process = run.tags.get(PROCESS_TAG)
        if process and gone(process):
            instance.report_run_failed(run, message=f"the svdpipe command that executed this run ({describe(process)}) "
                                       "was killed before finishing it")


def _resources(ctx: click.Context) -> dict:
    from assets.resources import MlflowResource, RayClusterResource, SvdpipeResource

    obj = ctx.obj
    res = SvdpipeResource(profile=obj["profile"], data_root=obj["data_root"], overrides=list(obj["overrides"]),
                          params_file=obj["params_file"])
    import dagster as dg

    return {"svdpipe": res, "mlflow": MlflowResource(svdpipe=res), "ray_cluster": RayClusterResource(svdpipe=res),
            "pipes_subprocess_client": dg.PipesSubprocessClient()}


def _register_batches(instance, batches: list[str]) -> None:
    """Make each batch a partition of the ingestion assets (what the sensor does for watched sources)."""
    from assets.partitions import ingest_batches

    registered = set(instance.get_dynamic_partitions(ingest_batches.name))
    instance.add_dynamic_partitions(ingest_batches.name, [b for b in batches if b not in registered])


def _run(job: str, assets: list[str], resources: dict, instance, partition_key: str | None = None):
    """Run the named job's ``assets`` (and their checks) in this process, recorded in the Dagster instance under
    the job's name like a UI run.

    A failed blocking check fails the run: the CLI stops there, as a run launched from the UI would.
    """
    import dagster as dg

    from orchestration.definitions import build_definitions
    from svdpipe.processes import identity

    ctx = click.get_current_context()
    level = ctx.meta.get("dagster_log_level", "WARNING")
    job_def = build_definitions(resources).resolve_job_def(job)
    result = job_def.execute_in_process(
        instance=instance, partition_key=partition_key, raise_on_error=False, tags={PROCESS_TAG: identity()},
        asset_selection=[dg.AssetKey(a) for a in assets],
        run_config={"loggers": {"console": {"config": {"log_level": level}}}})
    failed_checks = [e for e in result.get_asset_check_evaluations() if not e.passed]
    if failed_checks or not result.success:
        lines = [f"check {e.asset_key.to_user_string()}:{e.check_name} failed" + (f": {e.description}" if
                 e.description else "") + (f"\n{e.metadata['failing_videos'].value}" if "failing_videos" in
                 e.metadata else "") for e in failed_checks]
        lines += [e.message for e in result.all_events if e.is_failure][-3:]
        where = f"{job}[{partition_key}]" if partition_key else job
        raise click.ClickException(f"Dagster run {where} failed (data root {resources['svdpipe'].data_root}):\n  "
                                   + "\n  ".join(lines) + f"\n  details: `svdpipe ui`, run {result.run_id}")
    return result


def _hold_data_root(ctx: click.Context, storage, purpose: str) -> None:
    """One command at a time writes a data root; a second waits here (and says so) until the first is done."""
    ctx.with_resource(storage.lock(purpose, on_wait=lambda msg: click.echo(msg + " ...", err=True)))


def _materialization(result, asset: str):
    """The metadata of ``asset``'s newest materialization in a run's result."""
    events = [e for e in result.get_asset_materialization_events()
              if e.asset_key.to_user_string() == asset]
    return events[-1].materialization.metadata


def common_options(fn):
    fn = click.option("--params", "params_file", default=None, type=click.Path(exists=True, dir_okay=False),
                      help="YAML of config values in the profile's shape (DVC's params.yaml); before --set.")(fn)
    fn = click.option("--set", "overrides", multiple=True, metavar="SECTION.FIELD=VALUE",
                      help="Override one config value (repeatable), e.g. --set ingest.workers=4.")(fn)
    fn = click.option("--profile", default=None, metavar="NAME",
                      help="Config profile from configs/ (tiny, svd). Default: $SVDPIPE_PROFILE or tiny.")(fn)
    fn = click.option("--data-root", default=None, metavar="ROOT",
                      help="Data root: a folder or s3://bucket/prefix. Default: $SVDPIPE_DATA_ROOT, else the project "
                      "settings' (`svdpipe settings`), else <project home>/data.")(fn)
    return fn


def _store(ctx: click.Context, data_root, profile, overrides, params_file) -> None:
    """Resolve the config once and make it the one the Dagster definitions are built from (partitions: variants)."""
    from svdpipe.config import activate, resolve_sources

    try:
        src = activate(resolve_sources(profile, data_root, overrides, params_file=params_file))
    except Exception as e:  # noqa: BLE001 - a config error is the user's to fix
        raise click.UsageError(f"invalid configuration: {e}") from e
    if "orchestration.definitions" in sys.modules:  # built already, from another config: its partitions are stale
        raise click.UsageError("the Dagster definitions were loaded before the configuration was resolved")
    cfg = src.config
    ctx.obj = {"profile": cfg.profile, "data_root": cfg.data_root, "overrides": tuple(overrides),
               "params_file": src.params_file, "config": cfg}


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="Show Dagster's event log (-v: INFO, -vv: DEBUG).")
@click.pass_context
def main(ctx: click.Context, verbose: int) -> None:
    """svdpipe: raw video -> curated clips -> trained latent video diffusion models (the SVD recipe).

    Every command runs the same Dagster jobs as the UI (`svdpipe ui`), recorded in the Dagster instance
    ($DAGSTER_HOME, default <project home>/.dagster) and tracked in MLflow ($MLFLOW_TRACKING_URI, default
    <project home>/.mlflow). The project home is $SVDPIPE_HOME, else the nearest folder up from here with a
    svdpipe.yaml (`svdpipe settings`), else ~/.local/share/svdpipe. Configuration: configs/<profile>.yaml, then
    --params, then the project settings, then SVDPIPE__SECTION__FIELD variables, then --set.
    """
    ctx.meta["dagster_log_level"] = ["WARNING", "INFO", "DEBUG"][min(verbose, 2)]


@main.command()
@click.argument("source")
@common_options
@click.pass_context
def ingest(ctx, source, data_root, profile, overrides, params_file):
    """Ingest raw videos from SOURCE into DATA_ROOT/metadata/videos.parquet.

    SOURCE is a folder, an s3://bucket/prefix, or a CSV/Parquet manifest with a `url` column (http(s), s3:// or
    paths). Each input is probed and accepted, or rejected with its reason; inputs already ingested are skipped,
    and a batch interrupted earlier is resumed. Manifest paths outside the manifest's folder, file:// URLs and
    hosts on private networks (unless --set ingest.allow_private_hosts=true) are refused unread.
    """
    from curation.ingest import plan_batches, read_table, summarize
    from svdpipe.sources import list_inputs, redact_uri

    _store(ctx, data_root, profile, overrides, params_file)
    cfg = ctx.obj["config"]
    resources = _resources(ctx)
    try:
        uris = list_inputs(source, cfg.ingest.ignore)
    except (FileNotFoundError, ValueError) as e:
        raise click.UsageError(str(e)) from e
    storage = resources["svdpipe"].storage
    _hold_data_root(ctx, storage, "svdpipe ingest")
    todo, new = plan_batches(storage, uris, uris.refused)
    click.echo(f"{len(uris)} inputs under {redact_uri(source)}: {len(new)} new, {len(uris) - len(new)} already known; "
               f"{len(todo)} batch(es) to run")
    instance = _instance()
    _register_batches(instance, todo)
    for batch in todo:
        _run("ingest", ["ingested_batch"], resources, instance, partition_key=batch)
    _run("ingest", ["videos"], resources, instance)
    frame = read_table(storage)
    counts = summarize(frame)
    click.echo(f"videos table {storage.uri('metadata/videos.parquet')}: {counts['inputs']} inputs, "
               f"{counts['accepted']} accepted, {counts['rejected']} rejected")
    for uri, reason in frame.loc[frame["status"] == "rejected", ["source_uri", "reason"]].itertuples(index=False):
        click.echo(f"  rejected {Path(uri).name}: {reason}")


@main.command()
@click.option("--variant", "variants", multiple=True, metavar="NAME",
              help="Curated dataset(s) to build (repeatable). Default: every configured variant.")
@common_options
@click.pass_context
def curate(ctx, variants, data_root, profile, overrides, params_file):
    """Score the clips of every ingested batch not scored yet, validate the clips table, build curated datasets.

    Scores are computed once (a rerun scores nothing); a variant only selects over them, so changing a threshold
    (`--set variants.svd...` or params.yaml) rebuilds the selection and shards without rescoring.
    """
    from curation.batch_scoring import read_clips_table
    from curation.curated_dataset import prefix
    from curation.ingest import is_complete, known_batches

    _store(ctx, data_root, profile, overrides, params_file)
    cfg = ctx.obj["config"]
    chosen = list(variants) or sorted(cfg.variants)
    unknown = [v for v in chosen if v not in cfg.variants]
    if unknown:
        raise click.UsageError(f"unknown variant(s) {unknown}; configured: {', '.join(sorted(cfg.variants))}")
    resources = _resources(ctx)
    storage = resources["svdpipe"].storage
    _hold_data_root(ctx, storage, "svdpipe curate")
    batches = [b for b in sorted(known_batches(storage)) if is_complete(storage, b)]
    if not batches:
        raise click.UsageError(f"nothing ingested under {storage.root}; run `svdpipe ingest SOURCE` first")
    instance = _instance()
    _register_batches(instance, batches)
    for batch in batches:
        result = _run("score", ["clip_scores"], resources, instance, partition_key=batch)
        meta = _materialization(result, "clip_scores")
        if meta["videos_scored_now"].value:
            click.echo(f"batch {batch}: scored {meta['videos_scored_now'].value} video(s) on the "
                       f"{meta['engine'].value} engine, {meta['nodes'].value} node(s)")
    _run("curate", ["clips"], resources, instance)
    table = read_clips_table(storage)
    click.echo(f"clips table {storage.uri('metadata/clips.parquet')}: {len(table)} clips from "
               f"{table['video_id'].nunique()} videos")
    for variant in chosen:
        _run("curate", ["curated_dataset"], resources, instance, partition_key=variant)
        summary = json.loads(storage.read_text(f"{prefix(variant)}/selection.json"))
        filters = ", ".join(f"{k} {v}" for k, v in summary["kept_by_filter"].items()) or "no score filter"
        click.echo(f"  {variant:>12}: kept {summary['clips_kept']} of {summary['clips_usable']} usable clips "
                   f"({filters}); {len(summary['shards'])} shard(s) in {storage.uri(prefix(variant))}")


def _variants(cfg, variants) -> list[str]:
    chosen = list(variants) or sorted(cfg.variants)
    unknown = [v for v in chosen if v not in cfg.variants]
    if unknown:
        raise click.UsageError(f"unknown variant(s) {unknown}; configured: {', '.join(sorted(cfg.variants))}")
    return chosen


@main.command()
@click.option("--variant", "variants", multiple=True, metavar="NAME",
              help="Curation variant(s) to train on (repeatable). Default: every configured variant.")
@click.option("--stage", type=click.Choice(["1", "2", "3", "all"]), default="all", show_default=True,
              help="Stage to train: 1 image, 2 video pretraining, 3 finetuning; all runs 1 -> 2 -> 3.")
@common_options
@click.pass_context
def train(ctx, variants, stage, data_root, profile, overrides, params_file):
    """Compute clip latents, then train the stages with DeepSpeed (each a torchrun/python process under Pipes).

    A stage whose model is up to date (same data, config and parent model) is not retrained; an interrupted
    stage resumes from its newest checkpoint. Each stage logs one MLflow run; models land in ROOT/models/.
    """
    from training import model_store

    _store(ctx, data_root, profile, overrides, params_file)
    cfg = ctx.obj["config"]
    resources = _resources(ctx)
    storage = resources["svdpipe"].storage
    instance = _instance()
    stages = [1, 2, 3] if stage == "all" else [int(stage)]
    assets = {1: "image_model", 2: "video_model", 3: "finetuned_model"}
    for variant in _variants(cfg, variants):
        if not storage.exists(f"curated/{variant}/selection.json"):
            raise click.UsageError(f"no curated dataset {variant!r} under {storage.root}: run `svdpipe curate` first")
        # One Dagster run per variant: its MLflow runs are the children of one parent run.
        result = _run("train_variant", ["clip_latents", *(assets[s] for s in stages)], resources, instance,
                      partition_key=variant)
        for s in stages:
            meta = _materialization(result, assets[s])
            info = model_store.read_info(storage, model_store.model_key(variant, s)) or {}
            note = " (up to date, not retrained)" if meta.get("skipped") and meta["skipped"].value else ""
            loss = info.get("final_loss")
            click.echo(f"  {variant:>12} stage {s}: final loss {'-' if loss is None else f'{loss:.4f}'} after "
                       f"{info.get('steps')} steps, MLflow run {info.get('run_id')}, model "
                       f"{storage.uri(model_store.model_key(variant, s))}{note}")


@main.command()
@click.option("--variant", "variants", multiple=True, metavar="NAME",
              help="Variant(s) whose model to evaluate (repeatable). Default: every configured variant.")
@click.option("--stage", type=click.Choice(["2", "3"]), default="3", show_default=True,
              help="3: the Stage III image-to-video models (asset evaluation, with the registration rule); 2: the "
              "Stage II text-to-video base models from their evaluation clips' captions, as the paper compares "
              "curation variants (asset base_evaluation; never registered).")
@click.option("--compare/--no-compare", default=True, show_default=True,
              help="Then compare the newest evaluation of every variant, per evaluated stage (tables, plots, one "
              "MLflow run).")
@click.option("--metrics-out", type=click.Path(dir_okay=False), default=None, metavar="PATH",
              help="Also write each variant's metrics to this JSON file ({variant: {metric: value}}; for DVC).")
@common_options
@click.pass_context
def evaluate(ctx, variants, stage, compare, metrics_out, data_root, profile, overrides, params_file):
    """Evaluate Stage III models (or, with --stage 2, the Stage II base models) on held-out clips, apply the
    registration rule (Stage III), and compare the variants.

    A model already evaluated on the same evaluation set is not evaluated again (its MLflow run is reused). The
    comparison shows every evaluated stage: Stage III first, then the Stage II base models if any were evaluated.
    """
    _store(ctx, data_root, profile, overrides, params_file)
    cfg = ctx.obj["config"]
    resources = _resources(ctx)
    instance = _instance()
    collected = {}
    asset = {"2": "base_evaluation", "3": "evaluation"}[stage]
    for variant in _variants(cfg, variants):
        result = _run("evaluate", [asset], resources, instance, partition_key=variant)
        meta = _materialization(result, asset)
        collected[variant] = dict(meta["metrics"].value)
        shown = {k: meta[k].value for k in ("val_loss", "motion_fidelity", "temporal_consistency") if k in meta}
        click.echo(f"  {variant:>12}: " + ", ".join(f"{k} {v:.4g}" for k, v in shown.items()) +
                   (f"; registered: {meta['registered'].value} ({meta['registration_rule'].value})"
                    if "registered" in meta else ""))
    if metrics_out:
        Path(metrics_out).parent.mkdir(parents=True, exist_ok=True)
        Path(metrics_out).write_text(json.dumps(collected, indent=1, sort_keys=True) + "\n")
    if compare:
        result = _run("evaluate", ["variant_comparison"], resources, instance)
        meta = _materialization(result, "variant_comparison")
        click.echo("\n" + meta["table"].value)


@main.command("sample-corpus")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--seed", default=0, show_default=True, help="Random seed; another seed gives other videos.")
@click.option("--videos", default=4, show_default=True, help="Number of good videos.")
@click.option("--seconds", default=12.0, show_default=True, help="Approximate length of each video.")
@click.option("--fps", default=24, show_default=True)
@click.option("--width", default=320, show_default=True)
@click.option("--height", default=192, show_default=True)
@click.option("--broken/--no-broken", default=True, show_default=True, help="Also write one broken input of each kind.")
def sample_corpus(directory, seed, videos, seconds, fps, width, height, broken):
    """Write labelled synthetic videos and DIRECTORY/truth.json (cuts, fades, static/moving, text/clean)."""
    from tqdm import tqdm

    from curation.sample_corpus import BROKEN_KINDS, make_sample_corpus

    total = videos + (len(BROKEN_KINDS) if broken else 0)
    with tqdm(total=total, desc="sample corpus", unit="file") as bar:
        truth = make_sample_corpus(directory, seed=seed, videos=videos, seconds=seconds, fps=fps, width=width,
                                   height=height, broken=broken, progress=lambda _: bar.update(1))
    cuts = sum(len(v["cuts"]) for v in truth["videos"].values())
    click.echo(f"wrote {len(truth['videos'])} videos ({cuts} cuts) and {len(truth['broken'])} broken inputs "
               f"to {directory}; truth in {Path(directory) / 'truth.json'}")


@main.command()
@click.option("--data-root", default=None, metavar="ROOT", help="Data root the project uses by default.")
@click.option("--profile", default=None, metavar="NAME", help="Config profile the project uses by default.")
@click.option("--params", "params_file", default=None, type=click.Path(exists=True, dir_okay=False),
              help="Params file (DVC's params.yaml) the project reads by default.")
@click.option("--set", "overrides", multiple=True, metavar="SECTION.FIELD=VALUE",
              help="A config value the project uses by default (repeatable; replaces the stored list), e.g. "
              "--set ingest.watch=/videos/incoming to have new files ingested and curated by the UI's sensors.")
@click.option("--reset", is_flag=True, help="Forget the stored settings first.")
def settings(data_root, profile, params_file, overrides, reset):
    """Show, or change, the project settings: the defaults of every command and of the Dagster code location.

    They live in <project home>/svdpipe.yaml. `make demo` records its data root there, so that `make ui`, the
    schedule and the sensors work on the demo's data. With no option this only prints the home, the settings
    and the configuration they resolve to.
    """
    from svdpipe import project
    from svdpipe.config import resolve_sources

    home = project.project_home()
    current = project.ProjectSettings() if reset else project.read_settings(home)
    changes = {k: v for k, v in {"data_root": data_root, "profile": profile, "params": params_file}.items() if v}
    if overrides:
        changes["set"] = tuple(overrides)
    if changes or reset:
        updated = current.model_copy(update=changes)
        try:  # refuse settings that do not resolve, before they break every later command
            resolve_sources(updated.profile, updated.data_root, updated.set, params_file=updated.params)
        except Exception as e:  # noqa: BLE001 - the user's to fix
            raise click.UsageError(f"invalid settings: {e}") from e
        click.echo(f"wrote {project.write_settings(home, updated)}")
    try:
        src = resolve_sources()
    except Exception as e:  # noqa: BLE001
        raise click.UsageError(str(e)) from e
    click.echo(f"project home: {home}  ($SVDPIPE_HOME, else the nearest folder up with {project.SETTINGS_FILE})")
    click.echo(f"data root:    {src.data_root}\nprofile:      {src.profile}\nparams file:  {src.params_file or '-'}")
    click.echo(f"variants:     {', '.join(sorted(src.config.variants))}\n"
               f"ingest.watch: {src.config.ingest.watch or '- (the new-videos and automation sensors start stopped)'}")
    click.echo(f"Dagster home: {project.dagster_home()}\nMLflow store: {_tracking_uri(src.config)}")


def _tracking_uri(cfg) -> str:
    from svdpipe.tracking import tracking_uri

    return tracking_uri(cfg)


@main.command()
@click.option("--port", default=3000, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True, help="Bind address (loopback by default).")
def ui(port, host):
    """Start the Dagster UI and daemon (`dagster dev`) for svdpipe, on the project's data root and settings.

    The code location reads the project settings (`svdpipe settings`) and the environment, as every command
    does; DAGSTER_HOME defaults to <project home>/.dagster.
    """
    from svdpipe import project
    from svdpipe.config import resolve_sources

    try:
        src = resolve_sources()
    except Exception as e:  # noqa: BLE001
        raise click.UsageError(f"invalid configuration: {e}") from e
    home = dagster_home()
    _instance()  # the runs of commands killed before: failed now, neither shown running nor counted by the queue
    # Every process dagster dev starts (webserver, daemon, code server, runs) resolves the same project home.
    os.environ["SVDPIPE_HOME"] = str(src.home)
    click.echo(f"Dagster UI on http://{host}:{port} (DAGSTER_HOME={home})\n"
               f"data root {src.data_root}, profile {src.profile}, project settings {src.home / project.SETTINGS_FILE}")
    cmd = [sys.executable, "-m", "dagster", "dev", "-m", "orchestration.definitions", "-h", host, "-p", str(port)]
    sys.stdout.flush()
    # Replace this process: Ctrl-C and SIGTERM then reach `dagster dev` itself, which shuts its webserver,
    # daemon and code server down cleanly (a parent Python would kill it after 0.25 s).
    os.execv(sys.executable, cmd)


if __name__ == "__main__":
    main()
