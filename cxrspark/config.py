"""One typed configuration object, loaded from YAML files in conf/ plus command-line overrides.

    cfg = load_config(["conf/ingest.yaml", "conf/sources.yaml"], overrides=["ingest.image_size=256"])

Files are merged in order (sections deep-merged key by key, other values, lists and mappings such as
split ratios included, replaced whole). The merged mapping is validated by the pydantic models below
(strict types, unknown keys refused, ranges and choices checked): every problem is a
:class:`ConfigError` that names the key and the file (or ``--set``) it came from. Defaults live here
and nowhere else.
"""
from __future__ import annotations

import argparse
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class ConfigError(ValueError):
    pass


class _Section(BaseModel):
    """A config section: strict types (no "5" for 5, no true for 1; an int is a valid float), no
    unknown keys."""
    model_config = ConfigDict(extra="forbid", strict=True)


class SourceConfig(_Section):
    name: str
    kind: str
    root: str
    options: dict[str, Any] = Field(default_factory=dict)
    enabled: bool = True


class VerifyConfig(_Section):
    """When a candidate pair is a copy (cxrspark.images.copymatch; thresholds measured on the real
    data, see benchmarks/README.md "Near-duplicate detection")."""
    #: the keypoints verification matches: those whose SIFT contrast reaches this (at least
    #: dedup.contrast_threshold); weaker ones align one patient's serial films into the copies' detail range
    contrast_threshold: float = Field(0.02, gt=0, lt=1)
    #: Lowe's ratio test on RootSIFT matches
    ratio: float = Field(0.85, gt=0, le=1)
    #: RANSAC reprojection threshold, px of the 256 px working image
    ransac_px: float = Field(3.0, gt=0)
    #: RANSAC inliers of the similarity transform
    min_inliers: int = Field(8, ge=3)
    #: the affine transform's scale (sqrt of its determinant) within [1/max_scale, max_scale] and rotation
    #: within +-max_rotation degrees; a mirrored fit (negative determinant) is never a copy
    max_scale: float = Field(3.0, ge=1)
    max_rotation: float = Field(20.0, ge=0, le=180)
    #: x scale / y scale of the fitted affine transform within [1/max_aspect, max_aspect] (a copy resized
    #: to another aspect ratio), and its shear (|cos| of the angle between the mapped axes) at most max_shear
    max_aspect: float = Field(1.25, ge=1)
    max_shear: float = Field(0.1, ge=0)
    #: common area / the smaller image's area
    min_overlap: float = Field(0.5, gt=0, le=1)
    #: median block correlation of the high-pass detail (copies >= 0.58, look-alikes <= 0.30 measured)
    min_detail: float = Field(0.45, ge=-1, le=1)
    #: px of the Gaussian blur that the detail is taken against
    blur_sigma: float = Field(2.0, gt=0)
    #: blocks per side of the detail grid
    grid: int = Field(8, ge=1)


class DedupConfig(_Section):
    #: remove images whose decoded pixels are identical (false only for the leaky audit protocol)
    exact: bool = True
    #: find near duplicates (keypoint buckets + verification) in addition to exact (decoded-pixel hash) ones
    near: bool = True
    #: strongest SIFT keypoints kept per image
    keypoints: int = Field(300, ge=16, le=2000)
    #: longer side of the working image (px)
    work_size: int = Field(256, ge=64, le=1024)
    #: SIFT's contrast threshold of the bucketed keypoints: lower keeps more keypoints on smooth, low-contrast
    #: films (0.02 missed shrunken copies of films with few keypoints; benchmarks/README.md "Near-duplicate
    #: detection"); verification uses the ones that reach verify.contrast_threshold
    contrast_threshold: float = Field(0.01, gt=0, lt=1)
    #: SimHash tables and bits per table (a bucket key per keypoint and table)
    tables: int = Field(8, ge=1, le=64)
    bits: int = Field(40, ge=8, le=56)
    #: a candidate pair shares at least this many keypoints in common buckets
    min_shared: int = Field(4, ge=1)
    #: buckets holding more images than this are ignored (generic anatomy, not a copy)
    bucket_cap: int = Field(50, ge=2)
    verify: VerifyConfig = Field(default_factory=VerifyConfig)
    #: which member of a duplicate group is kept: the one with the most original pixels, ties broken
    #: by the order of sources in the config, then by record_id
    keep: Literal["largest"] = "largest"


class SplitConfig(_Section):
    #: split name -> fraction of images; fractions must sum to 1
    ratios: dict[str, float] = Field(default_factory=lambda: {"train": 0.72, "val": 0.18, "test": 0.10})
    seed: int = 42
    #: patient: a split group (a patient, or patients linked by duplicate images) never straddles two
    #: splits. image: every curated image is split on its own by a seeded hash of its record_id: the
    #: leaky protocol of the source studies (a patient's films and copies land in several splits), for
    #: audits only. Refused unless leaky_audit is true; recorded in summary.json and the model card.
    unit: Literal["patient", "image"] = "patient"
    #: the explicit request that unit: image needs
    leaky_audit: bool = False

    @model_validator(mode="after")
    def _leaky_only_on_request(self) -> SplitConfig:
        if self.unit == "image" and not self.leaky_audit:
            raise ValueError("unit: image is the leaky protocol of the source studies (patients and copies "
                             "straddle splits; metrics on it are not results), for audits only: set "
                             "ingest.split.leaky_audit=true as well to run it")
        return self

    @field_validator("ratios")
    @classmethod
    def _fractions(cls, v: dict[str, float]) -> dict[str, float]:
        if not v or any(x < 0 for x in v.values()) or abs(sum(v.values()) - 1.0) > 1e-6:
            raise ValueError(f"must be non-negative and sum to 1, got {v}")
        return v


class PartitionsConfig(_Section):
    """How the ingest spreads its work; derived from the input size, so the same defaults serve 2 cores
    and a cluster. They change how fast the ingest runs, never its result (not in the dataset hash)."""
    #: images per decode task (about 10 s of work each): enough tasks for every core and a moving
    #: progress line
    decode_rows: int = Field(250, ge=1)
    #: records per task of the per-file checks (existence, containment, file headers)
    record_rows: int = Field(20_000, ge=1)
    #: rows per shuffle partition of the per-image bookkeeping (ids, hashes, labels; no pixels):
    #: spark.sql.shuffle.partitions is raised to input rows / this when that is more than it is set to
    shuffle_rows: int = Field(20_000, ge=1)


class LungsConfig(_Section):
    """Lung segmentation in ingest (used when ``ingest.segmentation: unet``)."""
    #: the U-Net weights; None: the bundled, verified cxrspark/segmentation/lung_unet weights
    weights: str | None = None
    #: the training image stored in curated/: full | lung_crop (the lung box plus `crop_margin`,
    #: resized back to image_size) | lung_masked (non-lung pixels set to 0). The mask is always stored.
    stored_image: Literal["full", "lung_crop", "lung_masked"] = "full"
    #: margin around the lung bounding box, as a fraction of the box's height/width
    crop_margin: float = Field(0.05, ge=0, le=1)
    #: images per U-Net call inside the pandas UDF
    batch_size: int = Field(16, ge=1)
    #: TensorFlow threads per Spark task (a task holds one core)
    threads: int = Field(1, ge=1)
    threshold: float = Field(0.5, gt=0, lt=1)
    #: QC: a mask is plausible when its lung area fraction is within [min_area, max_area] and the
    #: raw prediction has at most max_components regions of at least min_region of the image each.
    #: Hand-drawn masks of the real annotations cover 0.09-0.55 of a padded image, always in 2 regions.
    #: Smaller regions are dropped from the stored mask without counting against it.
    min_area: float = 0.08
    max_area: float = 0.65
    max_components: int = Field(2, ge=1)
    min_region: float = 0.01

    @model_validator(mode="after")
    def _areas(self) -> LungsConfig:
        if not (0.0 <= self.min_area < self.max_area <= 1.0 and 0.0 < self.min_region < self.min_area):
            raise ValueError("need 0 <= min_area < max_area <= 1 and 0 < min_region < min_area")
        return self


class StandardizeConfig(_Section):
    """Collection-style removal applied to the stored image (after contrast, resize and the lung crop).
    The statistics come from the lung mask when segmentation ran, else from the image's non-padding
    pixels; the result is stored as uint8 like every stored image."""
    #: none | zscore: (x - mean) / sd, stored as 128 + scale * z (clipped) | histmatch: the pixels'
    #: histogram matched to the reference
    method: Literal["none", "zscore", "histmatch"] = "none"
    #: zscore (and the default histmatch reference): grey levels per standard deviation
    scale: float = Field(32.0, gt=0, le=128)
    #: histmatch: None: a normal distribution of mean 128 and sd `scale`, clipped to 0..255; else the
    #: path of a reference image (its whole histogram)
    reference: str | None = None


class IngestConfig(_Section):
    output: str = "out/dataset"
    classes: list[str] = Field(default_factory=lambda: ["COVID-19", "Normal", "Pneumonia"])
    image_size: int = Field(224, ge=16, le=2048)
    #: pad (keep aspect, black borders) | crop (keep aspect, centre crop) | stretch
    resize_mode: Literal["pad", "crop", "stretch"] = "pad"
    #: none | equalize (global histogram) | clahe
    contrast: Literal["none", "equalize", "clahe"] = "none"
    #: none | unet (lung segmentation with the U-Net of cxrspark/segmentation; settings in `lungs`)
    segmentation: Literal["none", "unet"] = "none"
    #: keep rows whose view is not recorded (class-per-folder sets are frontal by curation)
    keep_unknown_view: bool = True
    #: decompression-bomb guard: images with more pixels than this are quarantined
    max_pixels: int = 50_000_000
    #: images with a side shorter than this (px, from the header) are quarantined as too_small
    min_side: int = Field(64, ge=1)
    #: files larger than this (MiB) are quarantined without being decoded
    max_file_mb: int = 64
    #: use Pillow's JPEG draft mode (DCT scaling) when shrinking a lot
    jpeg_draft: bool = True
    #: Parquet row-group size: small enough that every Horovod rank gets row groups to read
    row_group_mb: int = 8
    lungs: LungsConfig = Field(default_factory=LungsConfig)
    standardize: StandardizeConfig = Field(default_factory=StandardizeConfig)
    dedup: DedupConfig = Field(default_factory=DedupConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    partitions: PartitionsConfig = Field(default_factory=PartitionsConfig)

    @field_validator("classes")
    @classmethod
    def _known_classes(cls, v: list[str]) -> list[str]:
        from cxrspark.labels import CLASSES
        if len(set(v)) != len(v) or not v:
            raise ValueError(f"must be a non-empty list without repeats: {v}")
        unknown = [c for c in v if c not in CLASSES]
        if unknown:
            raise ValueError(f"has unknown classes {unknown}; known: {list(CLASSES)}")
        return v


class SparkConfig(_Section):
    #: None: whatever spark-submit set, else local[*]
    master: str | None = None
    app_name: str = "cxrspark"
    shuffle_partitions: int = 8
    log_level: str = "WARN"
    #: extra Spark settings, e.g. {"spark.executor.memory": "4g"}
    conf: dict[str, str] = Field(default_factory=dict)

    @field_validator("conf", mode="before")
    @classmethod
    def _numbers_as_text(cls, v: Any) -> Any:
        """Spark settings are text; YAML reads ``spark.executor.cores: 4`` as a number and
        ``spark.sql.adaptive.enabled: true`` as a boolean (Spark spells it ``true``)."""
        if isinstance(v, dict):
            return {k: str(x).lower() if isinstance(x, bool) else str(x) if isinstance(x, (int, float)) else x
                    for k, x in v.items()}
        return v


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


class AugmentConfig(_Section):
    #: none | light (rotation 5, shift 5%, zoom 10%) | strong (rotation 10, shift 10%, zoom 15%,
    #: brightness and contrast 10%); any value below that is set overrides the preset
    preset: Literal["none", "light", "strong"] = "light"
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

    @model_validator(mode="after")
    def _in_range(self) -> AugmentConfig:
        a = self.resolved()
        for k in ("shift", "zoom", "brightness", "contrast"):
            if not 0.0 <= a[k] < 1.0:
                raise ValueError(f"'{k}' must be a fraction in [0, 1), not {a[k]}")
        if not 0.0 <= a["rotation"] <= 180.0:
            raise ValueError("'rotation' is in degrees, between 0 and 180")
        return self


assert set(typing.get_args(AugmentConfig.model_fields["preset"].annotation)) == set(AUGMENT_PRESETS)


class ScheduleConfig(_Section):
    """Three stages: linear warm-up from the single-worker rate to rate x workers, a plateau, then
    a step decay by ``decay_factor`` at each epoch in ``decay_epochs``."""
    warmup_epochs: int = Field(3, ge=0)
    decay_epochs: list[int] = Field(default_factory=lambda: [15, 25])
    decay_factor: float = 0.1

    @field_validator("decay_epochs")
    @classmethod
    def _ascending(cls, v: list[int]) -> list[int]:
        if sorted(v) != v:
            raise ValueError(f"must be ascending, not {v}")
        return v


class EarlyStoppingConfig(_Section):
    enabled: bool = True
    monitor: Literal["val_loss", "val_accuracy"] = "val_loss"
    patience: int = 8
    min_delta: float = 0.01
    restore_best_weights: bool = True


class ImbalanceConfig(_Section):
    #: weight each class's loss by n / (n_classes * n_class) of the training split
    class_weights: bool = True
    #: class -> fraction of every batch drawn from that class (minority oversampling), e.g.
    #: {COVID-19: 0.3}; the rest of each batch is drawn from the other classes in their natural mix
    oversample: dict[str, float] = Field(default_factory=dict)

    @field_validator("oversample")
    @classmethod
    def _known_fractions(cls, v: dict[str, float]) -> dict[str, float]:
        from cxrspark.labels import CLASSES
        bad = [c for c in v if c not in CLASSES]
        if bad:
            raise ValueError(f"names unknown classes {bad}; known: {list(CLASSES)}")
        if any(not 0.0 < f < 1.0 for f in v.values()) or sum(v.values()) >= 1.0:
            raise ValueError(f"fractions must be in (0, 1) and sum below 1: {v}")
        return v


class BalanceConfig(_Section):
    """Source-balanced sampling: within every class, each training source gets an equal share of that
    class's part of the batch (the class's natural share, or imbalance.oversample's)."""
    sources: bool = False
    #: sources with fewer training images of a class than this share one stream within that class
    min_images: int = Field(20, ge=1)


class AdversaryConfig(_Section):
    """A source-adversarial head (Ganin & Lempitsky 2015): it predicts each training image's source from
    the classifier's penultimate features through a gradient-reversal layer, so the features lose what
    tells the collections apart. The exported model is the classifier alone."""
    enabled: bool = False
    #: the largest weight of the reversed gradient (lambda)
    weight: float = Field(0.1, ge=0)
    #: ganin: lambda = weight * (2 / (1 + exp(-10 p)) - 1), p = fraction of the epochs done;
    #: constant: weight from the first step
    schedule: Literal["ganin", "constant"] = "ganin"
    #: class: one source classifier per class (the adversary sees source within class, so it removes
    #: collection style, not disease); none: one source classifier for all images
    condition: Literal["class", "none"] = "class"
    #: units of the adversary's hidden layer (0: a linear adversary)
    hidden: int = Field(64, ge=0)
    #: sources with fewer training images than this are one "other" source to the adversary
    min_images: int = Field(20, ge=1)


class MlflowConfig(_Section):
    #: None: $MLFLOW_TRACKING_URI if set, else sqlite:///<absolute train.output>/../mlflow/mlflow.db
    tracking_uri: str | None = None
    experiment: str = "cxrspark"
    run_name: str | None = None
    log_model: bool = True
    #: make the run a child of this run (the leave-one-source-out runner sets it)
    parent_run_id: str | None = None


class TrainConfig(_Section):
    #: an ingest output folder (the one holding summary.json and curated/)
    dataset: str = "out/dataset"
    #: checkpoints and the run's state live here; --resume continues from it
    output: str = "out/train"
    #: seed_cnn | darkcovidnet | vgg_dcnn | transfer:<Backbone> (see cxrspark/train/models.py)
    model: str = "seed_cnn"
    #: the model's input size; None: the model's own (seed_cnn 224, darkcovidnet 256, NASNetLarge 331,
    #: ...). The stored image is resized to it inside the model.
    input_size: int | None = Field(None, ge=32, le=1024)
    #: transfer models: none | imagenet (downloads) | a local weights file
    weights: str = "none"
    #: transfer models: unfreeze the top N layers of the backbone (0: frozen base)
    fine_tune_layers: int = 0
    epochs: int = Field(30, ge=1)
    #: per Horovod rank; the global batch is batch_size x ranks
    batch_size: int = Field(32, ge=1)
    #: adam | sgd (with momentum)
    optimizer: Literal["adam", "sgd"] = "adam"
    #: single-worker rate; Horovod scales it by the number of ranks after warm-up
    learning_rate: float = Field(0.001, gt=0)
    momentum: float = 0.9
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    shuffle_buffer: int = 1024
    seed: int = 42
    #: cap the steps of an epoch (None: one pass over the training split per epoch)
    steps_per_epoch: int | None = Field(None, ge=1)
    train_split: str = "train"
    #: leave out training images whose lung mask failed ingest's QC (needs ingest.segmentation: unet);
    #: validation and test always keep every image
    exclude_lung_flagged: bool = False
    #: leave these sources out of every split (leave-one-source-out training)
    exclude_sources: list[str] = Field(default_factory=list)
    val_split: str = "val"
    test_split: str = "test"
    #: petastorm reader threads per rank
    reader_workers: int = 2
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    early_stopping: EarlyStoppingConfig = Field(default_factory=EarlyStoppingConfig)
    imbalance: ImbalanceConfig = Field(default_factory=ImbalanceConfig)
    balance: BalanceConfig = Field(default_factory=BalanceConfig)
    adversary: AdversaryConfig = Field(default_factory=AdversaryConfig)
    mlflow: MlflowConfig = Field(default_factory=MlflowConfig)


class SegmenterAugmentConfig(_Section):
    """Random per-epoch changes; geometric ones move image and mask together."""
    rotation: float = 10.0  # degrees
    shift: float = 0.08
    zoom: float = 0.12
    brightness: float = 0.10
    contrast: float = 0.20


class SegmenterConfig(_Section):
    """Training the lung U-Net (jobs/train_segmenter.py) on V7 lung polygons of Cohen images."""
    #: V7 Darwin JSON annotations: a .zip of JSON files or a folder of them
    annotations: str = "data/raw/v7labs/annotations/covid-only.zip"
    #: the Cohen collection the annotations refer to (metadata.csv gives the patients)
    images: str = "data/raw/covid-chestxray-dataset"
    output: str = "out/segmenter"
    #: U-Net input size (divisible by 2**depth), filters of the first level, pooling levels
    size: int = Field(256, ge=32, le=1024)
    base_filters: int = Field(16, ge=1)
    depth: int = Field(4, ge=1)
    #: every training image is prepared with each of these contrast methods (ingest's options), one
    #: drawn at random per step, so the model works whatever ``ingest.contrast`` is
    contrasts: list[str] = Field(default_factory=lambda: ["none", "equalize", "clahe"])
    #: fraction of PATIENTS held out for validation (the Dice/IoU that is reported)
    val_fraction: float = Field(0.2, gt=0, lt=1)
    seed: int = 7
    epochs: int = Field(60, ge=1)
    batch_size: int = Field(8, ge=1)  # per rank
    learning_rate: float = Field(0.001, gt=0)
    #: stop when validation Dice has not improved by min_delta for this many epochs; best kept
    patience: int = 15
    min_delta: float = 0.001
    augment: SegmenterAugmentConfig = Field(default_factory=SegmenterAugmentConfig)
    #: a folder to write the best weights and their card to (e.g. cxrspark/segmentation/lung_unet)
    publish: str | None = None
    mlflow: MlflowConfig = Field(default_factory=lambda: MlflowConfig(experiment="cxrspark-segmenter"))

    @field_validator("contrasts")
    @classmethod
    def _known_contrasts(cls, v: list[str]) -> list[str]:
        from cxrspark.images.transforms import CONTRAST_METHODS
        bad = [c for c in v if c not in CONTRAST_METHODS] or ([] if v else ["(empty)"])
        if bad:
            raise ValueError(f"has unknown methods {bad}; known: {list(CONTRAST_METHODS)}")
        return v

    @model_validator(mode="after")
    def _size_fits_depth(self) -> SegmenterConfig:
        if self.size % (2 ** self.depth):
            raise ValueError(f"'size' must be divisible by 2**depth ({2 ** self.depth}), not {self.size}")
        return self


class EvaluateConfig(_Section):
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
    sources: list[str] = Field(default_factory=list)
    #: the source probe (a linear model predicting the source from penultimate features, folds grouped
    #: by patient) runs on these splits ("all": every split); a split the dataset lacks is skipped and
    #: named, and when it has none of them the probe runs on the evaluated split; empty: no probe
    probe_splits: list[str] = Field(default_factory=lambda: ["val", "test"])
    probe_folds: int = Field(5, ge=2)
    #: patient bootstrap resamples for the confidence intervals, and their level
    bootstrap: int = Field(1000, ge=1)
    level: float = Field(0.95, ge=0.5, lt=1)
    calibration_bins: int = Field(10, ge=2)
    #: Grad-CAM overlays per class and kind (correct / wrong)
    gradcam_per_class: int = 4
    batch_size: int = Field(32, ge=1)
    seed: int = 0
    #: the evaluation run goes to this experiment (the tracking URI is train.mlflow's)
    experiment: str = "cxrspark-evaluation"


class LosoConfig(_Section):
    """jobs/loso.py: leave-one-source-out. For each source: train on every other source (train.*
    settings), then evaluate on all images of the left-out source (evaluate.* settings)."""
    #: the sources to leave out in turn; empty: every source with at least min_images curated images
    sources: list[str] = Field(default_factory=list)
    min_images: int = Field(50, ge=1)
    #: one training output folder per left-out source goes under here
    output: str = "out/loso"
    #: the parent run, its training and evaluation runs all go to this experiment
    experiment: str = "cxrspark-loso"
    #: Horovod ranks per training (1: plain python; more: horovodrun on this machine)
    ranks: int = Field(1, ge=1)
    #: reuse a fold's finished training when its settings and data are unchanged since the last run
    reuse: bool = True


class SweepVariant(_Section):
    """One row family of the sweep: a dataset of ``sweep.datasets`` and training overrides."""
    name: str
    dataset: str
    #: ``--set`` style overrides of train.* (e.g. train.balance.sources=true)
    set: list[str] = Field(default_factory=list)
    #: also run leave-one-source-out for this variant (false: internal test only, e.g. the leaky protocol)
    loso: bool = True
    #: stored image and input size for this variant: None: sweep.image_size; "model": each model's own
    #: input size (seed_cnn 224, darkcovidnet 256, vgg_dcnn 224: the source studies' protocol); or px
    image_size: int | Literal["model"] | None = None
    #: another variant whose internal test accuracy this one is set beside (the leaky protocol vs
    #: cxrspark's, same model and size): a row of the reproduction table
    compare_with: str | None = None


class SweepConfig(_Section):
    """jobs/sweep.py: models x training recipes, each trained on all sources (internal test) and with
    every ``loso_sources`` source left out in turn; one MLflow parent run holds the table."""
    #: everything the sweep writes (datasets, trainings, table) goes under here
    output: str = "out/sweep"
    experiment: str = "cxrspark-sweep"
    models: list[str] = Field(default_factory=lambda: ["seed_cnn", "darkcovidnet", "vgg_dcnn"])
    #: the stored image size of every dataset and every model's input size (px)
    image_size: int = Field(80, ge=32, le=1024)
    #: dataset name -> ``--set`` style overrides of ingest.* over the job's ingest config; each is ingested
    #: once into <output>/datasets/<name> (an existing one with the same settings is reused)
    datasets: dict[str, list[str]] = Field(default_factory=dict)
    variants: list[SweepVariant] = Field(default_factory=list)
    #: the sources left out in turn
    loso_sources: list[str] = Field(default_factory=list)
    #: run only these variants / models (empty: all); the table still shows every finished cell
    only_variants: list[str] = Field(default_factory=list)
    only_models: list[str] = Field(default_factory=list)
    #: the recipe a winner must beat on mean LOSO accuracy by more than the CI half-width of the difference
    baseline_model: str = "seed_cnn"
    baseline_variant: str = "plain"
    #: a collapsed model cannot win: on a test set it gives one class to at least ``collapse_share`` of the
    #: images AND its macro F1 (classes present) is at most ``chance_margin`` above the best one-class
    #: predictor's; on the internal test, a class it never predicts refuses it too
    collapse_share: float = Field(0.95, gt=0, le=1)
    chance_margin: float = Field(0.05, ge=0, le=1)

    @model_validator(mode="after")
    def _known_datasets(self) -> SweepConfig:
        unknown = sorted({v.dataset for v in self.variants} - set(self.datasets))
        if unknown:
            raise ValueError(f"variants name datasets that sweep.datasets lacks: {unknown}")
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names):
            raise ValueError(f"variant names must be unique: {names}")
        bad = sorted({v.compare_with for v in self.variants if v.compare_with} - set(names))
        if bad:
            raise ValueError(f"compare_with names unknown variants: {bad}")
        return self


class PredictConfig(_Section):
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
    batch_size: int = Field(32, ge=1)
    #: TensorFlow threads per Spark task
    threads: int = Field(1, ge=1)


class AuditConfig(_Section):
    """jobs/audit.py: the leaks of a split someone else published (see cxrspark/audit.py)."""
    #: summary.json and leaks/ (Parquet) go here
    output: str = "out/audit"
    #: the provenance field that holds each record's published split
    split_field: str = "published_split"
    #: also look for duplicate images across the published splits, by pixels, where the files exist
    pixels: bool = True
    #: the audit's MLflow run goes to this experiment (the tracking URI is train.mlflow's)
    experiment: str = "cxrspark-audit"


class Config(_Section):
    sources: list[SourceConfig] = Field(default_factory=list)
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    spark: SparkConfig = Field(default_factory=SparkConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    segmenter: SegmenterConfig = Field(default_factory=SegmenterConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    predict: PredictConfig = Field(default_factory=PredictConfig)
    loso: LosoConfig = Field(default_factory=LosoConfig)
    sweep: SweepConfig = Field(default_factory=SweepConfig)
    audit: AuditConfig = Field(default_factory=AuditConfig)

    @field_validator("sources")
    @classmethod
    def _unique_names(cls, v: list[SourceConfig]) -> list[SourceConfig]:
        names = [s.name for s in v]
        if len(set(names)) != len(names):
            raise ValueError(f"source names must be unique: {names}")
        return v


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
    return _validated(merged, origin)


def _merge(dst: dict, src: dict, origin: dict, where: str, prefix: str) -> None:
    for k, v in src.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and isinstance(dst.get(k), dict) and _section_at(tuple(key.split('.'))) is not None:
            _merge(dst[k], v, origin, where, key + ".")
        else:
            dst[k] = v
        _mark(origin, key, v, where)


def _section_at(loc: tuple) -> type[_Section] | None:
    """The section model at ``loc`` (field names, list positions), or None where it names a value:
    sections are merged key by key, other mappings (split ratios, Spark settings) are replaced whole."""
    tp: Any = Config
    for part in loc:
        if isinstance(part, int):
            tp = typing.get_args(tp)[0] if typing.get_origin(tp) is list else None
            continue
        field = tp.model_fields.get(part) if isinstance(tp, type) and issubclass(tp, _Section) else None
        if field is None:
            return None
        tp = field.annotation
    return tp if isinstance(tp, type) and issubclass(tp, _Section) else None


def _mark(origin: dict, key: str, value: Any, where: str) -> None:
    origin[key] = where
    if isinstance(value, dict):
        for k, v in value.items():
            _mark(origin, f"{key}.{k}", v, where)


def _where(origin: dict, key: str) -> str:
    key = key.split("[")[0]
    while key:
        if key in origin:
            return origin[key]
        key = key.rpartition(".")[0]
    return "defaults"


def _key(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _problem(err: dict, origin: dict) -> str:
    """One validation error as a line naming the key and where it was set."""
    loc = tuple(err["loc"])
    key = _key(loc)
    if err["type"] == "extra_forbidden":
        section = _section_at(loc[:-1])
        known = ", ".join(sorted(section.model_fields)) if section else "?"
        return f"unknown key '{key}' in {_where(origin, key)}; known keys here: {known}"
    if err["type"] == "missing":
        return f"missing key '{key}' (in {_where(origin, _key(loc[:-1]))})"
    if err["type"] == "literal_error":
        section = _section_at(loc[:-1])
        choices = typing.get_args(section.model_fields[loc[-1]].annotation) if section else ()
        return (f"'{key}' must be one of {', '.join(map(str, choices))}, not {err.get('input')!r} "
                f"(in {_where(origin, key)})")
    msg = err["msg"].removeprefix("Value error, ")
    where = _where(origin, key) if key else "the config"
    got = err.get("input")
    shown = "" if isinstance(got, (dict, BaseModel)) or err["type"] == "value_error" else \
        f" (got {type(got).__name__} {got!r})"
    return f"'{key or 'config'}' in {where}: {msg}{shown}"


def _with_defaults(section: _Section, data: dict[str, Any]) -> dict[str, Any]:
    """``data`` with every subsection it sets completed from ``section``'s own default of it, so a partial
    subsection keeps defaults that differ from its class's (``segmenter.mlflow.experiment`` is
    ``cxrspark-segmenter`` when only ``segmenter.mlflow.run_name`` is set)."""
    out = dict(data)
    for name, value in data.items():
        default = getattr(section, name, None)
        if isinstance(default, _Section) and isinstance(value, dict):
            out[name] = {**default.model_dump(), **_with_defaults(default, value)}
    return out


def _validated(data: dict[str, Any], origin: dict[str, str]) -> Config:
    try:
        return Config.model_validate(_with_defaults(Config(), data))
    except ValidationError as exc:
        raise ConfigError("\n".join(_problem(e, origin) for e in exc.errors(include_url=False))) from None


def to_dict(cfg: BaseModel) -> dict[str, Any]:
    return cfg.model_dump()


def config_from_dict(data: dict[str, Any]) -> Config:
    """The inverse of :func:`to_dict` (used to ship a config to Spark-launched Horovod ranks)."""
    return _validated(data, {})
