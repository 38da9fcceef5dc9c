"""One typed configuration object, loaded from YAML files in conf/ plus command-line overrides.

    cfg = load_config(["conf/ingest.yaml", "conf/sources.yaml"], overrides=["ingest.image_size=256"])

Files are merged in order (mappings deep-merged, lists replaced). Every key is checked against the
dataclasses below: an unknown key or a value of the wrong type is a :class:`ConfigError` that names
the key and the file it came from. Defaults live here and nowhere else.
"""
from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    pass


@dataclass
class SourceConfig:
    name: str
    kind: str
    root: str
    options: dict[str, Any] = field(default_factory=dict)
    enabled: bool = True


@dataclass
class VerifyConfig:
    """When a candidate pair is a copy (cxrspark.images.copymatch; thresholds measured on the real
    data, see benchmarks/README.md "Near-duplicate detection")."""
    #: Lowe's ratio test on RootSIFT matches
    ratio: float = 0.85
    #: RANSAC reprojection threshold, px of the 256 px working image
    ransac_px: float = 3.0
    #: RANSAC inliers of the similarity transform
    min_inliers: int = 8
    #: the affine transform's scale (sqrt of its determinant) within [1/max_scale, max_scale] and rotation
    #: within +-max_rotation degrees; a mirrored fit (negative determinant) is never a copy
    max_scale: float = 3.0
    max_rotation: float = 20.0
    #: x scale / y scale of the fitted affine transform within [1/max_aspect, max_aspect] (a copy resized
    #: to another aspect ratio), and its shear (|cos| of the angle between the mapped axes) at most max_shear
    max_aspect: float = 1.25
    max_shear: float = 0.1
    #: common area / the smaller image's area
    min_overlap: float = 0.5
    #: median block correlation of the high-pass detail (copies >= 0.58, look-alikes <= 0.30 measured)
    min_detail: float = 0.45
    #: px of the Gaussian blur that the detail is taken against
    blur_sigma: float = 2.0
    #: blocks per side of the detail grid
    grid: int = 8


@dataclass
class DedupConfig:
    #: find near duplicates (keypoint buckets + verification) in addition to exact (decoded-pixel hash) ones
    near: bool = True
    #: strongest SIFT keypoints kept per image
    keypoints: int = 300
    #: longer side of the working image (px)
    work_size: int = 256
    #: SimHash tables and bits per table (a bucket key per keypoint and table)
    tables: int = 8
    bits: int = 40
    #: a candidate pair shares at least this many keypoints in common buckets
    min_shared: int = 4
    #: buckets holding more images than this are ignored (generic anatomy, not a copy)
    bucket_cap: int = 50
    verify: VerifyConfig = field(default_factory=VerifyConfig)
    #: which member of a duplicate group is kept: the one with the most original pixels, ties broken
    #: by the order of sources in the config, then by record_id
    keep: str = "largest"


@dataclass
class SplitConfig:
    #: split name -> fraction of images; fractions must sum to 1
    ratios: dict[str, float] = field(default_factory=lambda: {"train": 0.72, "val": 0.18, "test": 0.10})
    seed: int = 42


@dataclass
class PartitionsConfig:
    """How the ingest spreads its work; derived from the input size, so the same defaults serve 2 cores
    and a cluster. They change how fast the ingest runs, never its result (not in the dataset hash)."""
    #: images per decode task (about 10 s of work each): enough tasks for every core and a moving
    #: progress line
    decode_rows: int = 250
    #: records per task of the per-file checks (existence, containment, file headers)
    record_rows: int = 20_000
    #: rows per shuffle partition of the per-image bookkeeping (ids, hashes, labels; no pixels):
    #: spark.sql.shuffle.partitions is raised to input rows / this when that is more than it is set to
    shuffle_rows: int = 20_000


@dataclass
class LungsConfig:
    """Lung segmentation in ingest (used when ``ingest.segmentation: unet``)."""
    #: the U-Net weights; None: the bundled, verified cxrspark/segmentation/lung_unet weights
    weights: str | None = None
    #: the training image stored in curated/: full | lung_crop (the lung box plus `crop_margin`,
    #: resized back to image_size) | lung_masked (non-lung pixels set to 0). The mask is always stored.
    stored_image: str = "full"
    #: margin around the lung bounding box, as a fraction of the box's height/width
    crop_margin: float = 0.05
    #: images per U-Net call inside the pandas UDF
    batch_size: int = 16
    #: TensorFlow threads per Spark task (a task holds one core)
    threads: int = 1
    threshold: float = 0.5
    #: QC: a mask is plausible when its lung area fraction is within [min_area, max_area] and the
    #: raw prediction has at most max_components regions of at least min_region of the image each.
    #: Hand-drawn masks of the real annotations cover 0.09-0.55 of a padded image, always in 2 regions.
    #: Smaller regions are dropped from the stored mask without counting against it.
    min_area: float = 0.08
    max_area: float = 0.65
    max_components: int = 2
    min_region: float = 0.01


@dataclass
class IngestConfig:
    output: str = "out/dataset"
    classes: list[str] = field(default_factory=lambda: ["COVID-19", "Normal", "Pneumonia"])
    image_size: int = 224
    #: pad (keep aspect, black borders) | crop (keep aspect, centre crop) | stretch
    resize_mode: str = "pad"
    #: none | equalize (global histogram) | clahe
    contrast: str = "none"
    #: none | unet (lung segmentation with the U-Net of cxrspark/segmentation; settings in `lungs`)
    segmentation: str = "none"
    #: keep rows whose view is not recorded (class-per-folder sets are frontal by curation)
    keep_unknown_view: bool = True
    #: decompression-bomb guard: images with more pixels than this are quarantined
    max_pixels: int = 50_000_000
    #: images with a side shorter than this (px, from the header) are quarantined as too_small
    min_side: int = 64
    #: files larger than this (MiB) are quarantined without being decoded
    max_file_mb: int = 64
    #: use Pillow's JPEG draft mode (DCT scaling) when shrinking a lot
    jpeg_draft: bool = True
    #: Parquet row-group size: small enough that every Horovod rank gets row groups to read
    row_group_mb: int = 8
    lungs: LungsConfig = field(default_factory=LungsConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    partitions: PartitionsConfig = field(default_factory=PartitionsConfig)


@dataclass
class SparkConfig:
    #: None: whatever spark-submit set, else local[*]
    master: str | None = None
    app_name: str = "cxrspark"
    shuffle_partitions: int = 8
    log_level: str = "WARN"
    #: extra Spark settings, e.g. {"spark.executor.memory": "4g"}
    conf: dict[str, str] = field(default_factory=dict)


#: augmentation presets (the source studies' settings); a preset fills every AugmentConfig value
#: that is left unset. Angles in degrees, shift/zoom/brightness/contrast as fractions.
AUGMENT_PRESETS: dict[str, dict[str, Any]] = {
    "none": {"rotation": 0.0, "shift": 0.0, "zoom": 0.0, "brightness": 0.0, "contrast": 0.0,
             "horizontal_flip": False},
    "light": {"rotation": 5.0, "shift": 0.05, "zoom": 0.10, "brightness": 0.0, "contrast": 0.0,
              "horizontal_flip": False},
    "strong": {"rotation": 10.0, "shift": 0.10, "zoom": 0.15, "brightness": 0.10, "contrast": 0.10,
               "horizontal_flip": False},
}


@dataclass
class AugmentConfig:
    #: none | light (rotation 5, shift 5%, zoom 10%) | strong (rotation 10, shift 10%, zoom 15%,
    #: brightness and contrast 10%); any value below that is set overrides the preset
    preset: str = "light"
    rotation: float | None = None
    shift: float | None = None
    zoom: float | None = None
    brightness: float | None = None
    contrast: float | None = None
    #: off in every preset: the chest is not left-right symmetric
    horizontal_flip: bool | None = None

    def resolved(self) -> dict[str, Any]:
        values = dict(AUGMENT_PRESETS[self.preset])
        for k in values:
            if getattr(self, k) is not None:
                values[k] = getattr(self, k)
        return values


@dataclass
class ScheduleConfig:
    """Three stages: linear warm-up from the single-worker rate to rate x workers, a plateau, then
    a step decay by ``decay_factor`` at each epoch in ``decay_epochs``."""
    warmup_epochs: int = 3
    decay_epochs: list[int] = field(default_factory=lambda: [15, 25])
    decay_factor: float = 0.1


@dataclass
class EarlyStoppingConfig:
    enabled: bool = True
    monitor: str = "val_loss"
    patience: int = 8
    min_delta: float = 0.01
    restore_best_weights: bool = True


@dataclass
class ImbalanceConfig:
    #: weight each class's loss by n / (n_classes * n_class) of the training split
    class_weights: bool = True
    #: class -> fraction of every batch drawn from that class (minority oversampling), e.g.
    #: {COVID-19: 0.3}; the rest of each batch is drawn from the other classes in their natural mix
    oversample: dict[str, float] = field(default_factory=dict)


@dataclass
class MlflowConfig:
    #: None: $MLFLOW_TRACKING_URI if set, else sqlite:///<absolute train.output>/../mlflow/mlflow.db
    tracking_uri: str | None = None
    experiment: str = "cxrspark"
    run_name: str | None = None
    log_model: bool = True
    #: make the run a child of this run (the leave-one-source-out runner sets it)
    parent_run_id: str | None = None


@dataclass
class TrainConfig:
    #: an ingest output folder (the one holding summary.json and curated/)
    dataset: str = "out/dataset"
    #: checkpoints and the run's state live here; --resume continues from it
    output: str = "out/train"
    #: seed_cnn | darkcovidnet | vgg_dcnn | transfer:<Backbone> (see cxrspark/train/models.py)
    model: str = "seed_cnn"
    #: the model's input size; None: the model's own (seed_cnn 224, darkcovidnet 256, NASNetLarge 331,
    #: ...). The stored image is resized to it inside the model.
    input_size: int | None = None
    #: transfer models: none | imagenet (downloads) | a local weights file
    weights: str = "none"
    #: transfer models: unfreeze the top N layers of the backbone (0: frozen base)
    fine_tune_layers: int = 0
    epochs: int = 30
    #: per Horovod rank; the global batch is batch_size x ranks
    batch_size: int = 32
    #: adam | sgd (with momentum)
    optimizer: str = "adam"
    #: single-worker rate; Horovod scales it by the number of ranks after warm-up
    learning_rate: float = 0.001
    momentum: float = 0.9
    label_smoothing: float = 0.1
    shuffle_buffer: int = 1024
    seed: int = 42
    #: cap the steps of an epoch (None: one pass over the training split per epoch)
    steps_per_epoch: int | None = None
    train_split: str = "train"
    #: leave out training images whose lung mask failed ingest's QC (needs ingest.segmentation: unet);
    #: validation and test always keep every image
    exclude_lung_flagged: bool = False
    #: leave these sources out of every split (leave-one-source-out training)
    exclude_sources: list[str] = field(default_factory=list)
    val_split: str = "val"
    test_split: str = "test"
    #: petastorm reader threads per rank
    reader_workers: int = 2
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    imbalance: ImbalanceConfig = field(default_factory=ImbalanceConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)


@dataclass
class SegmenterAugmentConfig:
    """Random per-epoch changes; geometric ones move image and mask together."""
    rotation: float = 10.0  # degrees
    shift: float = 0.08
    zoom: float = 0.12
    brightness: float = 0.10
    contrast: float = 0.20


@dataclass
class SegmenterConfig:
    """Training the lung U-Net (jobs/train_segmenter.py) on V7 lung polygons of Cohen images."""
    #: V7 Darwin JSON annotations: a .zip of JSON files or a folder of them
    annotations: str = "data/raw/v7labs/annotations/covid-only.zip"
    #: the Cohen collection the annotations refer to (metadata.csv gives the patients)
    images: str = "data/raw/covid-chestxray-dataset"
    output: str = "out/segmenter"
    #: U-Net input size (divisible by 2**depth), filters of the first level, pooling levels
    size: int = 256
    base_filters: int = 16
    depth: int = 4
    #: every training image is prepared with each of these contrast methods (ingest's options), one
    #: drawn at random per step, so the model works whatever ``ingest.contrast`` is
    contrasts: list[str] = field(default_factory=lambda: ["none", "equalize", "clahe"])
    #: fraction of PATIENTS held out for validation (the Dice/IoU that is reported)
    val_fraction: float = 0.2
    seed: int = 7
    epochs: int = 60
    batch_size: int = 8  # per rank
    learning_rate: float = 0.001
    #: stop when validation Dice has not improved by min_delta for this many epochs; best kept
    patience: int = 15
    min_delta: float = 0.001
    augment: SegmenterAugmentConfig = field(default_factory=SegmenterAugmentConfig)
    #: a folder to write the best weights and their card to (e.g. cxrspark/segmentation/lung_unet)
    publish: str | None = None
    mlflow: MlflowConfig = field(default_factory=lambda: MlflowConfig(experiment="cxrspark-segmenter"))


@dataclass
class EvaluateConfig:
    """jobs/evaluate.py: a trained model on one split of an ingest output."""
    #: runs:/<run id>/model, models:/<model id>, a Keras .h5/.keras file, or "latest": the model of the
    #: newest finished run of train.mlflow.experiment
    model: str = "latest"
    #: an ingest output; None: train.dataset
    dataset: str | None = None
    #: a split of the dataset, or "all" (every split: for a dataset the model never saw, such as a new
    #: hospital's or a left-out source's)
    split: str = "test"
    #: evaluate only images of these sources (empty: all)
    sources: list[str] = field(default_factory=list)
    #: the source probe (a linear model predicting the source from penultimate features, folds grouped
    #: by patient) runs on these splits ("all": every split); empty: no probe
    probe_splits: list[str] = field(default_factory=lambda: ["val", "test"])
    probe_folds: int = 5
    #: patient bootstrap resamples for the confidence intervals, and their level
    bootstrap: int = 1000
    level: float = 0.95
    calibration_bins: int = 10
    #: Grad-CAM overlays per class and kind (correct / wrong)
    gradcam_per_class: int = 4
    batch_size: int = 32
    seed: int = 0
    #: the evaluation run goes to this experiment (the tracking URI is train.mlflow's)
    experiment: str = "cxrspark-evaluation"


@dataclass
class LosoConfig:
    """jobs/loso.py: leave-one-source-out. For each source: train on every other source (train.*
    settings), then evaluate on all images of the left-out source (evaluate.* settings)."""
    #: the sources to leave out in turn; empty: every source with at least min_images curated images
    sources: list[str] = field(default_factory=list)
    min_images: int = 50
    #: one training output folder per left-out source goes under here
    output: str = "out/loso"
    #: the parent run, its training and evaluation runs all go to this experiment
    experiment: str = "cxrspark-loso"
    #: Horovod ranks per training (1: plain python; more: horovodrun on this machine)
    ranks: int = 1
    #: reuse a fold's finished training when its settings and data are unchanged since the last run
    reuse: bool = True


@dataclass
class PredictConfig:
    """jobs/predict.py: batch prediction with Spark over an ingest output or a folder of image files."""
    #: as evaluate.model: runs:/..., models:/..., a Keras file, or "latest" (train.mlflow.experiment)
    model: str = "latest"
    #: an ingest output (a folder with summary.json) or any folder of image files (searched recursively)
    input: str = "out/dataset"
    #: ingest output: a split or "all"
    split: str = "all"
    #: folder input: the files to take (a glob relative to the folder; hidden files are skipped)
    pattern: str = "**/*"
    #: Parquet of predictions plus summary.json
    output: str = "out/predictions"
    batch_size: int = 32
    #: TensorFlow threads per Spark task
    threads: int = 1


@dataclass
class Config:
    sources: list[SourceConfig] = field(default_factory=list)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    spark: SparkConfig = field(default_factory=SparkConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    segmenter: SegmenterConfig = field(default_factory=SegmenterConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    predict: PredictConfig = field(default_factory=PredictConfig)
    loso: LosoConfig = field(default_factory=LosoConfig)


_CHOICES = {
    "ingest.resize_mode": ("pad", "crop", "stretch"),
    "ingest.contrast": ("none", "equalize", "clahe"),
    "ingest.segmentation": ("none", "unet"),
    "ingest.lungs.stored_image": ("full", "lung_crop", "lung_masked"),
    "ingest.dedup.keep": ("largest",),
    "train.optimizer": ("adam", "sgd"),
    "train.augment.preset": tuple(AUGMENT_PRESETS),
    "train.early_stopping.monitor": ("val_loss", "val_accuracy"),
}


# ---- the options every job takes ------------------------------------------------------------------
def add_config_arguments(parser: argparse.ArgumentParser, defaults: list[str], example: str) -> None:
    """Add ``--config FILE`` (repeatable) and ``--set KEY=VALUE`` (repeatable) to a job's parser;
    :func:`config_from_arguments` turns the parsed result into a :class:`Config`."""
    parser.add_argument("--config", action="append", metavar="FILE",
                        help=f"YAML file (repeatable; later files win). Default: {' '.join(defaults)}")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help=f"override one setting, e.g. --set {example} (repeatable)")
    parser.set_defaults(config_defaults=list(defaults))


def config_from_arguments(args: argparse.Namespace) -> Config:
    """The config of a job's parsed ``--config``/``--set`` options (raises :class:`ConfigError`)."""
    return load_config(args.config or args.config_defaults, args.overrides)


def parse_job(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> tuple[argparse.Namespace, Config]:
    """Parse a job's command line and load its config. A bad config ends the job the way argparse
    ends it for a bad option: ``config error: ...`` on stderr, exit status 2."""
    args = parser.parse_args(argv)
    try:
        return args, config_from_arguments(args)
    except ConfigError as exc:
        parser.exit(2, f"config error: {exc}\n")


# ---- loading -------------------------------------------------------------------------------------
def load_config(paths: list[str | Path] | None = None, overrides: list[str] | None = None) -> Config:
    merged: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for p in paths or []:
        p = Path(p)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{p}: not valid YAML: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"{p}: top level must be a mapping, not {type(data).__name__}")
        _merge(merged, data, origin, str(p), "")
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} must look like section.key=value")
        value = yaml.safe_load(raw) if raw.strip() else None
        nested: Any = value
        for part in reversed(key.strip().split(".")):
            nested = {part: nested}
        _merge(merged, nested, origin, "--set", "")
    cfg = _build(Config, merged, "", origin)
    _validate(cfg)
    return cfg


def _merge(dst: dict, src: dict, origin: dict, where: str, prefix: str) -> None:
    for k, v in src.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and isinstance(dst.get(k), dict) and _is_section(key):
            _merge(dst[k], v, origin, where, key + ".")
        else:
            dst[k] = v
        _mark(origin, key, v, where)


def _is_section(key: str) -> bool:
    """True when ``key`` names a config section (merged key by key); other mappings, such as
    split ratios or Spark settings, are values and a later file replaces them whole."""
    tp: Any = Config
    for part in key.split("."):
        if not dataclasses.is_dataclass(tp):
            return False
        hints = typing.get_type_hints(tp)
        if part not in hints:
            return False
        tp = hints[part]
    return dataclasses.is_dataclass(tp)


def _mark(origin: dict, key: str, value: Any, where: str) -> None:
    origin[key] = where
    if isinstance(value, dict):
        for k, v in value.items():
            _mark(origin, f"{key}.{k}", v, where)


def _where(origin: dict, key: str) -> str:
    while key:
        if key in origin:
            return origin[key]
        key = key.rpartition(".")[0]
    return "defaults"


def _build(cls: type, data: Any, prefix: str, origin: dict) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'} (from {_where(origin, prefix)}): expected a mapping, "
                          f"got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for k in data:
        if k not in names:
            key = f"{prefix}{k}"
            raise ConfigError(f"unknown key '{key}' in {_where(origin, key)}; "
                              f"known keys here: {', '.join(sorted(names))}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            key = f"{prefix}{f.name}"
            kwargs[f.name] = _coerce(hints[f.name], data[f.name], key, origin)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"missing key '{prefix}{f.name}' (in {_where(origin, prefix.rstrip('.'))})")
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, key: str, origin: dict) -> Any:
    def bad() -> ConfigError:
        return ConfigError(f"'{key}' in {_where(origin, key)}: expected {_name(tp)}, "
                           f"got {type(value).__name__} {value!r}")

    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key + ".", origin)
    o = typing.get_origin(tp)
    args = typing.get_args(tp)
    if o in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, key, origin)
    if o is list:
        if not isinstance(value, list):
            raise bad()
        return [_coerce(args[0], v, f"{key}[{i}]", origin) for i, v in enumerate(value)]
    if o is dict:
        if not isinstance(value, dict):
            raise bad()
        return {_coerce(args[0], k, key, origin): _coerce(args[1], v, f"{key}.{k}", origin)
                for k, v in value.items()}
    if tp is Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is str and isinstance(value, (int, float)) and not isinstance(value, bool) and key.startswith("spark.conf"):
        return str(value)
    if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise bad()
    return value


def _name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _validate(cfg: Config) -> None:
    for key, allowed in _CHOICES.items():
        obj: Any = cfg
        for part in key.split("."):
            obj = getattr(obj, part)
        if obj not in allowed:
            raise ConfigError(f"'{key}' must be one of {', '.join(allowed)}, not {obj!r}")
    ing = cfg.ingest
    if not 16 <= ing.image_size <= 2048:
        raise ConfigError(f"'ingest.image_size' must be between 16 and 2048, not {ing.image_size}")
    if ing.min_side < 1:
        raise ConfigError(f"'ingest.min_side' must be at least 1, not {ing.min_side}")
    dd = ing.dedup
    if not (16 <= dd.keypoints <= 2000 and 64 <= dd.work_size <= 1024 and 1 <= dd.tables <= 64
            and 8 <= dd.bits <= 56 and dd.min_shared >= 1 and dd.bucket_cap >= 2):
        raise ConfigError("'ingest.dedup': keypoints 16..2000, work_size 64..1024, tables 1..64, bits 8..56, "
                          "min_shared >= 1 and bucket_cap >= 2")
    v = dd.verify
    if not (v.min_inliers >= 3 and v.max_scale >= 1.0 and 0.0 <= v.max_rotation <= 180.0
            and v.max_aspect >= 1.0 and v.max_shear >= 0.0 and 0.0 < v.min_overlap <= 1.0 and -1.0 <= v.min_detail <= 1.0 and 0.0 < v.ratio <= 1.0
            and v.ransac_px > 0 and v.blur_sigma > 0 and v.grid >= 1):
        raise ConfigError("'ingest.dedup.verify': min_inliers >= 3, max_scale >= 1, max_rotation 0..180, "
                          "min_overlap in (0, 1], min_detail in [-1, 1], ratio in (0, 1], ransac_px, blur_sigma > 0")
    ratios = ing.split.ratios
    if not ratios or any(v < 0 for v in ratios.values()) or abs(sum(ratios.values()) - 1.0) > 1e-6:
        raise ConfigError(f"'ingest.split.ratios' must be non-negative and sum to 1, got {ratios}")
    if len(set(ing.classes)) != len(ing.classes) or not ing.classes:
        raise ConfigError(f"'ingest.classes' must be a non-empty list without repeats: {ing.classes}")
    from cxrspark.labels import CLASSES
    unknown = [c for c in ing.classes if c not in CLASSES]
    if unknown:
        raise ConfigError(f"'ingest.classes' has unknown classes {unknown}; known: {list(CLASSES)}")
    pt = ing.partitions
    if min(pt.decode_rows, pt.record_rows, pt.shuffle_rows) < 1:
        raise ConfigError("'ingest.partitions': decode_rows, record_rows and shuffle_rows must be at least 1")
    lungs = ing.lungs
    if not (0.0 <= lungs.min_area < lungs.max_area <= 1.0 and 0.0 < lungs.threshold < 1.0
            and 0.0 <= lungs.crop_margin <= 1.0 and lungs.batch_size >= 1 and lungs.threads >= 1
            and lungs.max_components >= 1 and 0.0 < lungs.min_region < lungs.min_area):
        raise ConfigError("'ingest.lungs': need 0 <= min_area < max_area <= 1, 0 < threshold < 1, "
                          "0 <= crop_margin <= 1, batch_size, threads and max_components >= 1, "
                          "0 < min_region < min_area")
    _validate_train(cfg.train)
    _validate_segmenter(cfg.segmenter)
    ev = cfg.evaluate
    if (ev.bootstrap < 1 or not 0.5 <= ev.level < 1.0 or ev.calibration_bins < 2 or ev.batch_size < 1
            or ev.probe_folds < 2):
        raise ConfigError("'evaluate': bootstrap >= 1, 0.5 <= level < 1, calibration_bins >= 2, batch_size >= 1, "
                          "probe_folds >= 2")
    if cfg.loso.min_images < 1 or cfg.loso.ranks < 1:
        raise ConfigError("'loso': min_images and ranks must be at least 1")
    if cfg.predict.batch_size < 1 or cfg.predict.threads < 1:
        raise ConfigError("'predict': batch_size and threads must be at least 1")
    names = [s.name for s in cfg.sources]
    if len(set(names)) != len(names):
        raise ConfigError(f"source names must be unique: {names}")


def _validate_train(tr: TrainConfig) -> None:
    from cxrspark.labels import CLASSES
    if tr.epochs < 1 or tr.batch_size < 1:
        raise ConfigError("'train.epochs' and 'train.batch_size' must be at least 1")
    if tr.input_size is not None and not 32 <= tr.input_size <= 1024:
        raise ConfigError("'train.input_size' must be between 32 and 1024 (or null for the model's own)")
    if tr.steps_per_epoch is not None and tr.steps_per_epoch < 1:
        raise ConfigError("'train.steps_per_epoch' must be at least 1 (or null)")
    if not 0.0 <= tr.label_smoothing < 1.0:
        raise ConfigError("'train.label_smoothing' must be in [0, 1)")
    if tr.learning_rate <= 0:
        raise ConfigError("'train.learning_rate' must be positive")
    a = tr.augment.resolved()
    for k in ("shift", "zoom", "brightness", "contrast"):
        if not 0.0 <= a[k] < 1.0:
            raise ConfigError(f"'train.augment.{k}' must be a fraction in [0, 1), not {a[k]}")
    if not 0.0 <= a["rotation"] <= 180.0:
        raise ConfigError("'train.augment.rotation' is in degrees, between 0 and 180")
    over = tr.imbalance.oversample
    bad = [c for c in over if c not in CLASSES]
    if bad:
        raise ConfigError(f"'train.imbalance.oversample' names unknown classes {bad}; known: {list(CLASSES)}")
    if any(not 0.0 < v < 1.0 for v in over.values()) or sum(over.values()) >= 1.0:
        raise ConfigError(f"'train.imbalance.oversample' fractions must be in (0, 1) and sum below 1: {over}")
    if sorted(tr.schedule.decay_epochs) != tr.schedule.decay_epochs or tr.schedule.warmup_epochs < 0:
        raise ConfigError("'train.schedule.decay_epochs' must be ascending and warmup_epochs >= 0")


def _validate_segmenter(sg: SegmenterConfig) -> None:
    from cxrspark.images.transforms import CONTRAST_METHODS
    if sg.depth < 1 or sg.size % (2 ** sg.depth) or not 32 <= sg.size <= 1024:
        raise ConfigError(f"'segmenter.size' must be 32..1024 and divisible by 2**depth, not {sg.size}")
    if sg.base_filters < 1 or sg.epochs < 1 or sg.batch_size < 1 or sg.learning_rate <= 0:
        raise ConfigError("'segmenter': base_filters, epochs, batch_size and learning_rate must be positive")
    if not 0.0 < sg.val_fraction < 1.0:
        raise ConfigError("'segmenter.val_fraction' must be in (0, 1)")
    bad = [c for c in sg.contrasts if c not in CONTRAST_METHODS] or ([] if sg.contrasts else ["(empty)"])
    if bad:
        raise ConfigError(f"'segmenter.contrasts' has unknown methods {bad}; known: {list(CONTRAST_METHODS)}")


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def config_from_dict(data: dict[str, Any]) -> Config:
    """The inverse of :func:`to_dict` (used to ship a config to Spark-launched Horovod ranks)."""
    cfg = _build(Config, data, "", {})
    _validate(cfg)
    return cfg
