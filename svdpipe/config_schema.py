"""The schema of the run configuration: one frozen pydantic section per part of the chain, and their defaults.

Every field carries its description and bounds. How a run's values are resolved from profiles, params files, project
settings, the environment and ``--set`` is ``svdpipe.config``'s.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# Secrets never reach MLflow params or Dagster metadata, even if someone puts them in a config.
SECRET_MARKERS = ("secret", "password", "token", "access_key")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class IngestConfig(_Section):
    """Raw-video ingestion: what counts as a video and how remote inputs are fetched."""

    watch: str | None = Field(
        None, description="folder or s3:// prefix the new-videos sensor watches (None: the sensor skips)"
    )
    ignore: tuple[str, ...] = Field(
        (".*", "*.json", "*.md", "*.csv", "*.parquet", "*.dvc"),
        description="file-name globs in a source that are not inputs (sidecar metadata, manifests, hidden files)",
    )
    download_timeout_s: float = Field(60.0, gt=0, description="per-request connect/read timeout for URL inputs")
    download_retries: int = Field(3, ge=0, description="extra attempts for a URL after a transient failure")
    download_deadline_s: float = Field(
        3600.0, gt=0, description="wall-clock limit of one URL download, retries included (a server trickling bytes "
        "cannot hold a batch)"
    )
    allow_private_hosts: bool = Field(
        False, description="fetch URLs whose host resolves to a loopback, private, link-local or multicast address "
        "(refused by default: a manifest must not reach the machine's own network)"
    )
    max_input_bytes: int = Field(8 * 1024**3, gt=0, description="inputs larger than this are rejected unread")
    min_decoded_fraction: float = Field(
        0.9, gt=0, le=1, description="a stream decoding to less than this fraction of its declared length is truncated"
    )
    workers: int = Field(2, ge=1, description="processes probing inputs in parallel within one batch")


class CutsConfig(_Section):
    """Cut detection: a cascade of PySceneDetect passes at three frame rates (owned by curation/cuts.py)."""

    detect_width: int = Field(256, ge=32, description="frames are resized to this width for cut detection")
    full_threshold: float = Field(
        27.0, gt=0, description="full-rate pass: ContentDetector score (mean HSV change, 0-255) that makes a hard cut"
    )
    sub_fps: tuple[float, float] = Field(
        (6.0, 2.0),
        description="target rates (fps) of the two subsampled ContentDetector passes; step = round(fps / rate)",
    )
    sub_thresholds: tuple[float, float] = Field(
        (8.0, 12.0), description="ContentDetector score between successive samples that makes a subsampled candidate"
    )
    black_level: float = Field(
        12.0, ge=0, le=255,
        description="ThresholdDetector: mean pixel value below which a frame counts as faded to black",
    )
    min_shot_s: float = Field(0.4, ge=0, description="no shot is shorter than this (cuts closer together are merged)")
    merge_s: float = Field(0.4, ge=0, description="detections from different passes this close are one cut")
    fade_window_s: float = Field(
        1.0, gt=0,
        description="contrast on either side of a dip is measured over this long (at least the longest dissolve: "
        "the dip can sit anywhere in it); the dip must be the lowest point within half of it",
    )
    dip_ratio: float = Field(
        1.18, gt=0, le=1.5,
        description="a dissolve's contrast dip: contrast at the dip over the lowest contrast a blend of the two "
        "sides can have (about 1.0 for a dissolve between unrelated shots; 1.41 for no dip between equal sides)",
    )


class MotionConfig(_Section):
    """Motion score: mean Farneback optical-flow magnitude between frames sampled at ``curation.sample_fps``."""

    flow_short_side: int = Field(64, ge=8, description="frames are resized to this short side before the flow")


class TextConfig(_Section):
    """Text area: CRAFT text detection on the first, middle and last sampled frame of a clip."""

    long_side: int = Field(640, ge=64, description="frames are resized to this long side for CRAFT")
    text_threshold: float = Field(
        0.85, gt=0, lt=1,
        description="CRAFT region score a text component must reach somewhere to count; above easyocr's 0.7, which "
        "round shapes in textured scenes reach (up to 0.76 measured), while caption text peaks above 0.95",
    )
    link_threshold: float = Field(
        0.4, gt=0, lt=1, description="CRAFT affinity score that links characters into one word box (easyocr: 0.4)"
    )
    low_text: float = Field(
        0.4, gt=0, lt=1, description="CRAFT region score bounding a text component's extent (easyocr: 0.4)"
    )
    batch_size: int = Field(16, ge=1, description="frames (of one size, from many clips) per CRAFT forward pass")


class ClipConfig(_Section):
    """CLIP image/text embeddings of the first, middle and last frame, and the LAION-style aesthetic head on them."""

    model: str = Field("tiny-clip", description="open_clip model name (tiny-* names are svdpipe's small random models)")
    pretrained: str | None = Field(
        None, description="open_clip pretrained tag (downloaded by open_clip), a local weights file, or None (random)"
    )
    aesthetic_head: str | None = Field(
        None,
        description="weights file of the LAION improved-aesthetic-predictor MLP for this CLIP; None: tiny models "
        "get a seeded random head written to cache_dir, other models refuse to score",
    )
    cache_dir: str = Field(
        "~/.cache/svdpipe", description="folder for files svdpipe generates for tiny models (the random aesthetic head)"
    )
    batch_size: int = Field(32, ge=1, description="frames per CLIP image-encoder forward pass")


class CaptionConfig(_Section):
    """Captions: CoCa on the middle frame (the paper's video captioner and LLM summary plug in beside it)."""

    model: str = Field("tiny-coca", description="open_clip CoCa model name (tiny-* are small random models)")
    pretrained: str | None = Field(
        None, description="open_clip pretrained tag (downloaded by open_clip), a local weights file, or None (random)"
    )
    max_tokens: int = Field(
        30, ge=1, le=75, description="longest caption in BPE tokens (CoCa's text context is 76 with the start token)"
    )
    min_tokens: int = Field(4, ge=1, description="shortest caption in BPE tokens: no end token before this many")
    num_beams: int = Field(3, ge=1, description="beam-search width of the CoCa decoder (1: greedy)")
    batch_size: int = Field(16, ge=1, description="clips captioned in one batched beam search")


class CurationConfig(_Section):
    workers: int = Field(2, ge=1, description="processes scoring videos in parallel within one partition (local engine)")
    ray_batch_clips: int = Field(
        64, ge=1, description="ray engine: clips of many videos a scorer actor takes per call (its networks then "
        "run text/clip/caption batch_size frames at a time)",
    )
    ray_scorers: int | None = Field(
        None, ge=1, description="ray engine: scorer actors (each loads every network once); None: one per GPU of "
        "the cluster, or on a cluster without GPUs one per 4 CPUs",
    )
    sample_fps: float = Field(2.0, gt=0, description="rate of the frames kept for motion, text, CLIP and captions")
    score_short_side: int = Field(256, ge=32, description="short side of the kept frames")
    cuts: CutsConfig = CutsConfig()
    motion: MotionConfig = MotionConfig()
    text: TextConfig = TextConfig()
    clip: ClipConfig = ClipConfig()
    caption: CaptionConfig = CaptionConfig()


class ScoreFilter(_Section):
    """Keep a clip when its ``score`` passes every bound given; percentiles are over the variant's usable clips."""

    score: Literal["motion_score", "text_area_ratio", "aesthetic_score", "clip_text_similarity"]
    min: float | None = Field(None, description="absolute lower bound (inclusive)")
    max: float | None = Field(None, description="absolute upper bound (inclusive)")
    drop_lowest_pct: float | None = Field(None, ge=0, lt=100, description="drop this percentage of lowest scores")
    drop_highest_pct: float | None = Field(None, ge=0, lt=100, description="drop this percentage of highest scores")


class VariantConfig(_Section):
    """A named curation policy: which scored clips a curated dataset keeps."""

    description: str = ""
    min_duration_s: float = Field(1.0, ge=0, description="shorter clips are not usable for training")
    drop_duplicates: bool = Field(False, description="drop clips marked duplicate_of an earlier clip (dedup section)")
    allow_empty: bool = Field(
        False, description="a selection of 0 clips is a valid dataset (else curated_dataset fails on it)"
    )
    filters: tuple[ScoreFilter, ...] = ()


def _default_variants() -> dict[str, VariantConfig]:
    # The paper's filters (Sec. 3, App. C): 25 % most static, 25 % most text (and > 7 % of the frame),
    # 25 % lowest aesthetics, 50 % lowest CLIP text match removed; captions are not filtered.
    return {
        "uncurated": VariantConfig(description="every usable clip (long enough, scored)"),
        "svd": VariantConfig(
            description="SVD's curation: drop near-duplicates and static, text-heavy, unaesthetic and poorly "
            "captioned clips",
            drop_duplicates=True,
            filters=(
                ScoreFilter(score="motion_score", drop_lowest_pct=25),
                ScoreFilter(score="text_area_ratio", drop_highest_pct=25, max=0.07),
                ScoreFilter(score="aesthetic_score", drop_lowest_pct=25),
                ScoreFilter(score="clip_text_similarity", drop_lowest_pct=50),
            ),
        ),
    }


class ShardsConfig(_Section):
    """WebDataset tar shards of a curated dataset: one sample per clip (mp4, json metadata, txt caption)."""

    max_clips_per_shard: int = Field(256, ge=1)
    short_side: int | None = Field(None, ge=16, description="resize clips to this short side; None keeps the source")
    crf: int = Field(18, ge=0, le=51, description="x264 quality of the re-encoded clips (lower is better)")
    workers: int = Field(2, ge=1, description="threads encoding clips in parallel, one source video each")


class DedupConfig(_Section):
    """Near-duplicate clips (NeMo Curator's semantic dedup), marked when the clips table is gathered."""

    embedding: Literal["clip", "thumbnail"] = Field(
        "clip", description="clip: mean CLIP image embedding of the first/middle/last frame; thumbnail: a "
        "perceptual 4x4 colour-thumbnail embedding (for random tiny CLIPs, which cannot tell shots apart)",
    )
    max_distance: float = Field(
        0.05, ge=0, lt=2, description="cosine distance at or below which a clip duplicates an earlier one",
    )


class MlflowConfig(_Section):
    tracking_uri: str | None = Field(
        None, description="MLflow tracking URI; unset means $MLFLOW_TRACKING_URI, else a local SQLite store"
    )
    experiment: str = "svdpipe"
    ui_url: str | None = Field(
        None, description="the MLflow UI's address as a browser reaches it, for links in Dagster metadata (a server "
        "known inside a cluster by another name); unset: the tracking URI when it is http(s)"
    )
    artifact_location: str | None = Field(
        None, description="artifact root for a newly created experiment (e.g. s3://bucket/mlflow); None: the default"
    )


class ComputeConfig(_Section):
    """Where networks run and which engine spreads per-video work (curation scoring, latent encoding)."""

    device: str = Field("auto", description="auto (CUDA when present, else CPU), cpu, cuda or cuda:N")
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="inference precision of the networks (scorers, encoders, samplers); training has its own"
    )
    engine: Literal["local", "ray"] = Field("local", description="local: a process pool; ray: a Ray cluster")
    ray_address: str | None = Field(
        None, description="address of an existing Ray cluster (ray://host:10001 or host:6379); None starts a local one"
    )


class StageConfig(_Section):
    """One training stage (docs/architecture.md, "The paper's numbers"): resolution, schedule and EDM training noise."""

    height: int = Field(64, ge=8, description="training resolution in pixels (a multiple of the autoencoder's factor)")
    width: int = Field(64, ge=8)
    frames: int = Field(1, ge=1, description="frames per sample (1: image stage)")
    steps: int = Field(20, ge=1, description="optimizer steps")
    micro_batch: int = Field(2, ge=1, description="samples per process per forward pass")
    grad_accum: int = Field(1, ge=1, description="micro-batches per optimizer step")
    lr: float = Field(1e-4, gt=0, description="peak learning rate after warm-up")
    warmup_steps: int = Field(0, ge=0, description="linear learning-rate warm-up")
    P_mean: float = Field(-1.2, description="ln(sigma) ~ N(P_mean, P_std^2): the training noise")
    P_std: float = Field(1.2, gt=0)
    p_drop: float = Field(0.1, ge=0, lt=1, description="share of samples trained unconditioned (for guidance)")
    ema_decay: float | None = Field(None, gt=0, lt=1, description="EMA of weights; None: no EMA")
    conditioning: Literal["text", "image"] = Field(
        "image", description="text: SD 2.1's text cross-attention (+ fps, motion); image: SVD's image-to-video"
    )
    grad_checkpointing: bool = Field(False, description="recompute activations in the backward pass (less memory)")


def _default_stages() -> dict[str, StageConfig]:
    return {
        "1": StageConfig(frames=1, P_mean=-1.2, P_std=1.0),
        "2": StageConfig(frames=4, P_mean=-1.2, P_std=1.2),
        "3": StageConfig(frames=4, height=96, width=96, P_mean=0.7, P_std=1.6, lr=3e-5, ema_decay=0.99),
    }


class PerfConfig(_Section):
    """Throughput settings of the training step (training.perf, docs/training-throughput.md): each leaves the maths as
    it is (equal losses on CPU up to summation order) and changes only how fast a GPU runs it."""

    parameter_alignment: bool = Field(
        False, description="ZeRO-1/2: pad DeepSpeed's flat weight buffer so every parameter starts 16-byte aligned "
        "(the video UNet's one-element mix_factor weights otherwise shift later weights off the alignment cuBLAS's "
        "Hopper kernels need)",
    )
    channels_last: bool = Field(
        False, description="feed every 2-d convolution NHWC input (cuDNN's tensor-core layout) instead of NCHW",
    )
    cudnn_benchmark: bool = Field(False, description="let cuDNN time its convolution algorithms once per shape")
    compile: Literal["none", "blocks"] = Field(
        "none", description="torch.compile: none, or each UNet res-block and transformer separately (regional "
        "compilation, far quicker to compile than the whole UNet)",
    )
    fused_adamw: bool = Field(False, description="torch's fused AdamW kernel for the optimizer step")
    overlap_comm: bool = Field(False, description="ZeRO: overlap gradient reduction with the backward pass")


class LatentStoreConfig(_Section):
    """How clip latents are stored and streamed to training (training/latent_store.py): shards of a fixed number
    of clips, read by each rank for its own samples only."""

    shard_clips: int = Field(256, ge=1, description="clips per latent shard (written as they are encoded)")
    num_workers: int = Field(2, ge=0, description="DataLoader worker processes per rank (0: read in the trainer)")
    prefetch_factor: int = Field(2, ge=1, description="steps each worker reads ahead")


class TrainingConfig(_Section):
    """The three stages and what they share; the ``svd`` profile sets the paper's values."""

    model_size: Literal["tiny", "small", "svd"] = Field(
        "tiny", description="UNet, autoencoder and image-encoder sizes (small: a GPU check of the whole chain)"
    )
    deepspeed: str = Field("zero2", description="infra/deepspeed/<name>.json (zero2 or zero3) or a path")
    nproc: int = Field(1, ge=1, description="training processes per node (torchrun --nproc-per-node)")
    nnodes: int = Field(1, ge=1, description="nodes of one training job (torchrun --nnodes); every node runs the "
                        "same stage command (docs/deployment.md)")
    rdzv_endpoint: str | None = Field(
        None, description="host:port where the nodes meet (torchrun --rdzv-endpoint), a free port on one of them; "
        "needed when nnodes > 1",
    )
    rdzv_backend: Literal["c10d", "static"] = Field(
        "c10d", description="c10d: torchrun's rendezvous, node ranks assigned as nodes join (restarted nodes may "
        "swap); static: node_rank fixes them and the endpoint is the first node's master address",
    )
    node_rank: int = Field(0, ge=0, description="this node's rank (torchrun --node-rank), read by the static "
                           "rendezvous only; set per node, e.g. SVDPIPE__TRAINING__NODE_RANK")
    stages: dict[str, StageConfig] = Field(default_factory=_default_stages)
    checkpoint_every: int = Field(10, ge=1, description="optimizer steps between DeepSpeed checkpoints")
    keep_checkpoints: int = Field(2, ge=1, description="newest checkpoints kept on disk")
    motion_score_max: float = Field(
        32.0, gt=0, description="motion score mapped to bucket 255 (training.conditioning.motion_bucket)"
    )
    frame_rate: float = Field(
        7.0, gt=0, description="frames are taken from clips at about this rate (SVD's pipeline default fps is 7)"
    )
    cond_aug_samples: int = Field(2, ge=1, description="noise-augmented conditioning latents stored per clip")
    cond_aug_online: bool = Field(
        False, description="image-conditioned stages noise and encode the conditioning frame every step on the "
        "training device, as the paper does (needs the frame's pixels in the latent store); False: pick one of "
        "the cond_aug_samples stored draws",
    )
    text_encoder: str = Field("tiny-clip", description="open_clip model whose text tower conditions stage 1")
    text_encoder_pretrained: str | None = None
    vae_path: str | None = Field(None, description="pretrained autoencoder (folder or hub id); None: random")
    image_encoder_path: str | None = Field(None, description="pretrained CLIP image encoder; None: random")
    image_unet_path: str | None = Field(None, description="initial stage 1 weights (e.g. SD 2.1's UNet)")
    sample_steps: int = Field(8, ge=1, description="sampler steps for the sample videos logged per stage")
    perf: PerfConfig = Field(default_factory=PerfConfig, description="throughput settings (training/perf.py)")
    latent_store: LatentStoreConfig = Field(
        default_factory=LatentStoreConfig, description="latent shards and their reading (training/latent_store.py)"
    )

    @model_validator(mode="after")
    def _nodes(self) -> TrainingConfig:
        if self.nnodes > 1 and not self.rdzv_endpoint:
            raise ValueError("training.nnodes > 1 needs training.rdzv_endpoint (host:port of the rendezvous)")
        if self.node_rank >= self.nnodes:
            raise ValueError(f"training.node_rank {self.node_rank} is not below training.nnodes {self.nnodes}")
        return self


# Where and on how many processes a stage runs; the results do not depend on them (tests/training/test_multinode.py).
LAUNCH_FIELDS = frozenset({"nproc", "nnodes", "rdzv_endpoint", "rdzv_backend", "node_rank"})


class EvaluationConfig(_Section):
    sample_steps: int = Field(8, ge=1, description="EDM sampler steps per generated video")
    heun: bool = Field(False, description="Heun's 2nd order correction (EDM Algorithm 1)")
    min_guidance: float = Field(1.0, ge=0)
    max_guidance: float = Field(2.5, ge=0, description="guidance on the last frame (rises linearly from min)")
    max_videos: int = Field(8, ge=1, description="held-out clips generated per evaluation")
    val_sigmas: tuple[float, ...] = Field(
        (0.02, 0.1, 0.5, 1.0, 2.0, 5.0, 20.0, 80.0), description="fixed noise levels of the validation loss"
    )
    feature_extractor: str = Field("clip", description="Frechet distance features: clip, or i3d with i3d_weights")
    i3d_weights: str | None = None
    register_metric: str = Field("val_loss", description="a new stage-3 model is registered only if not worse")
    holdout_fraction: float = Field(
        0.2, ge=0, lt=1, description="share of usable clips held out for evaluation, by clip id hash, before any "
        "variant filter; no variant trains on them (training.eval_set)")
    holdout_min_clips: int = Field(
        4, ge=0, description="at least this many evaluation clips (smallest hashes; at most half the pool)")
    motion_sweep: tuple[int, ...] = Field(
        (0, 85, 170, 255), min_length=2, description="motion buckets generated for the same conditioning frame and "
        "noise; motion fidelity is the rank correlation of bucket and measured motion per frame")
    motion_sweep_clips: int = Field(4, ge=1, description="conditioning frames (evaluation clips) swept")
    static_motion_ratio: float = Field(
        0.1, ge=0, description="samples moving less than this share of the real clips' motion are static: their "
        "temporal consistency cannot win a comparison or a registration")


class ScheduleConfig(_Section):
    retrain_cron: str = Field("0 3 * * 0", description="cron of the stage-3 retraining schedule (Sundays 03:00)")
    retrain_variant: str = Field("svd", description="curation variant the schedule retrains on")


class ChecksConfig(_Section):
    """Data checks that gate the chain (data_checks/, run as blocking Dagster asset checks)."""

    max_error_fraction: float = Field(
        0.01, ge=0, le=1,
        description="most clips whose scoring failed, as a share of the clips table, before no curated dataset is "
        "built (a scorer bug must not become a dataset of error rows)",
    )


class SvdpipeConfig(_Section):
    profile: str = "tiny"
    data_root: str = Field(
        "data", description="folder or s3://bucket/prefix; load_config resolves it (default <project home>/data)"
    )
    seed: int = 0
    ingest: IngestConfig = IngestConfig()
    curation: CurationConfig = CurationConfig()
    variants: dict[str, VariantConfig] = Field(default_factory=_default_variants)
    shards: ShardsConfig = ShardsConfig()
    dedup: DedupConfig = DedupConfig()
    mlflow: MlflowConfig = MlflowConfig()
    training: TrainingConfig = TrainingConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    compute: ComputeConfig = ComputeConfig()
    checks: ChecksConfig = ChecksConfig()

    def flat(self) -> dict[str, str]:
        """Dotted-key view for MLflow params and Dagster metadata, with secret-looking keys dropped."""
        out: dict[str, str] = {}

        def walk(prefix: str, value: Any) -> None:
            if isinstance(value, dict):
                for k, v in value.items():
                    walk(f"{prefix}.{k}" if prefix else k, v)
            elif not any(m in prefix.lower() for m in SECRET_MARKERS):
                out[prefix] = str(value)

        walk("", self.model_dump(mode="json"))
        return out
