"""Curated Parquet -> tf.data for one Horovod rank, through Petastorm's ``make_batch_reader``.

Training streams are infinite (``num_epochs=None``) and Keras runs a fixed ``steps_per_epoch``
computed from the split size, the same on every rank, so no rank waits in an allreduce for another
that ran out of data. Each rank reads its own row groups (``cur_shard=rank, shard_count=size``).
A split with fewer row groups than ranks (a tiny dataset) is read whole by every rank in a fixed
order and thinned with ``Dataset.shard``, so ranks still see disjoint rows.

With minority oversampling each class named in the config gets its own stream (the whole split,
filtered to that class, shuffled with a per-rank seed) and ``sample_from_datasets`` draws that
fraction of every batch from it; the rest of the batch comes from the other classes.

With source-balanced sampling (``train.balance.sources``) every (class, source) pair gets such a
stream: a class keeps its share of the batch (natural, or the oversampled fraction) and splits it
equally among its training sources; sources with fewer than ``balance.min_images`` images of the
class share one pooled stream (see :func:`source_balanced_weights`). Every stream reads the whole
split (one reader per stream); their shuffle buffers share ``train.shuffle_buffer``.

Evaluation streams are finite and sharded the same way; see :func:`eval_batches`.
"""
from __future__ import annotations

import contextlib
import glob
import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import tensorflow as tf

# petastorm 0.13 with pyarrow 14: legacy-dataset FutureWarnings and notices on every reader (harmless)
warnings.filterwarnings("ignore", category=FutureWarning, module=r"petastorm(\.|$)")
warnings.filterwarnings("ignore", category=UserWarning, module=r"petastorm(\.|$)")
warnings.filterwarnings("ignore", category=UnicodeWarning, module=r"petastorm(\.|$)")

FIELDS = ["record_id", "image", "label_index", "source", "patient_key"]


class DatasetError(ValueError):
    pass


@dataclass(frozen=True)
class DatasetInfo:
    """What training needs to know about an ingest output, read from its summary.json."""
    root: Path
    image_size: int
    classes: list[str]
    dataset_hash: str
    #: split -> class -> number of curated images (training split: without lung-flagged images when
    #: ``exclude_lung_flagged``)
    counts: dict[str, dict[str, int]]
    #: leave out training images whose lung mask failed QC (lung_mask_ok = false)
    exclude_lung_flagged: bool = False
    #: read only images of these sources (None: every source); counts are already restricted to them
    sources: tuple[str, ...] | None = None
    #: split -> (source, class) -> number of curated images, restricted and lung-filtered like ``counts``
    source_counts: dict[str, dict[tuple[str, str], int]] = field(default_factory=dict)

    def url(self, split: str) -> str:
        return f"file://{self.root}/curated/{split}"

    def size(self, split: str) -> int:
        return sum(self.counts.get(split, {}).values())

    def row_groups(self, split: str) -> int:
        import pyarrow.parquet as pq
        files = glob.glob(str(self.root / "curated" / split / "*.parquet"))
        return sum(pq.ParquetFile(f).metadata.num_row_groups for f in files)


def load_dataset_info(root: str | Path, exclude_lung_flagged: bool = False,
                      train_split: str = "train", *, include_sources: list[str] | None = None,
                      exclude_sources: list[str] | None = None) -> DatasetInfo:
    """The dataset at ``root``; ``include_sources``/``exclude_sources`` restrict every split to some
    sources (leave-one-source-out training and evaluation)."""
    root = Path(root).resolve()
    summary = root / "summary.json"
    if not summary.is_file():
        raise DatasetError(f"{root} is not an ingest output (no summary.json); run jobs/ingest.py first "
                           f"or point train.dataset at its ingest.output folder")
    s = json.loads(summary.read_text())
    counts: dict[str, dict[str, int]] = {sp: {c: 0 for c in s["classes"]} for sp in s["splits"]}
    by_source: dict[str, dict[tuple[str, str], int]] = {sp: {} for sp in s["splits"]}
    if exclude_lung_flagged and s.get("lungs", {}).get("segmentation", "none") == "none":
        raise DatasetError(f"train.exclude_lung_flagged needs lung QC columns, but {root} was ingested "
                           f"without segmentation; re-run ingest with ingest.segmentation: unet")
    present = sorted({row["source"] for row in s["curated_table"]})
    kept: tuple[str, ...] | None = None
    if include_sources or exclude_sources:
        unknown = sorted((set(include_sources or []) | set(exclude_sources or [])) - set(present))
        if unknown:
            raise DatasetError(f"{root} has no images of source(s) {unknown}; its sources: {present}")
        kept = tuple(src for src in present if (not include_sources or src in include_sources)
                     and src not in (exclude_sources or []))
    for row in s["curated_table"]:
        if kept is not None and row["source"] not in kept:
            continue
        drop = (row.get("lung_flagged") or 0) if exclude_lung_flagged and row["split"] == train_split else 0
        counts[row["split"]][row["label"]] += row["n"] - drop
        key = (row["source"], row["label"])
        by_source[row["split"]][key] = by_source[row["split"]].get(key, 0) + row["n"] - drop
    return DatasetInfo(root, int(s["config"]["ingest"]["image_size"]), list(s["classes"]),
                       s["dataset_hash"], counts, exclude_lung_flagged, kept, by_source)


def sources_of(root: str | Path) -> dict[str, int]:
    """Source -> number of curated images (all splits) of an ingest output."""
    s = json.loads((Path(root) / "summary.json").read_text())
    out: dict[str, int] = {}
    for row in s["curated_table"]:
        out[row["source"]] = out.get(row["source"], 0) + row["n"]
    return out


# ---- readers ------------------------------------------------------------------------------------
def _reader(info: DatasetInfo, split: str, rank: int, size: int, *, repeat: bool, shuffle: bool,
            seed: int, workers: int, shard: bool = True):
    """A petastorm batch reader and whether it shards by row group (else the caller thins rows)."""
    from petastorm import make_batch_reader

    if info.size(split) == 0:
        raise DatasetError(f"split {split!r} of {info.root} is empty")
    by_row_group = shard and size > 1 and info.row_groups(split) >= size
    deterministic = shard and size > 1 and not by_row_group
    kwargs: dict[str, Any] = dict(cur_shard=rank, shard_count=size) if by_row_group else {}
    fields = FIELDS + (["lung_mask_ok"] if info.exclude_lung_flagged else [])
    reader = make_batch_reader(info.url(split), schema_fields=fields, num_epochs=None if repeat else 1,
                               shuffle_row_groups=shuffle and not deterministic, seed=seed,
                               workers_count=1 if deterministic else workers, **kwargs)
    return reader, deterministic


def _rows(reader, thin: bool, rank: int, size: int, sources: tuple[str, ...] | None = None) -> tf.data.Dataset:
    from petastorm.tf_utils import make_petastorm_dataset

    ds = make_petastorm_dataset(reader).unbatch()
    if thin:
        ds = ds.shard(size, rank)
    if sources is not None:
        kept = tf.constant(list(sources) or [""])
        ds = ds.filter(lambda row: tf.reduce_any(tf.equal(row.source, kept)))
    return ds


def _decode(image_size: int, n_classes: int, source_index: dict[str, int] | None = None):
    """Row -> (image, one-hot label), or ``({"image": image, "source": index}, label)`` with
    ``source_index`` (sources it does not name get -1)."""
    table = None
    if source_index is not None:
        table = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
            tf.constant(list(source_index) or [""]), tf.constant(list(source_index.values()) or [-1], tf.int32)), -1)

    def decode(row):
        pixels = tf.io.decode_raw(row.image, tf.uint8)
        image = tf.cast(tf.reshape(pixels, (image_size, image_size, 1)), tf.float32)
        label = tf.one_hot(tf.cast(row.label_index, tf.int32), n_classes)
        if table is None:
            return image, label
        return {"image": image, "source": table.lookup(row.source)}, label
    return decode


# ---- augmentation -------------------------------------------------------------------------------
def make_augmenter(settings: dict[str, Any], seed: int) -> tf.keras.Sequential | None:
    """Random augmentation for a batch of images in [0, 255] (Keras preprocessing layers)."""
    L = tf.keras.layers
    steps: list[tf.keras.layers.Layer] = []
    if settings["rotation"]:
        steps.append(L.RandomRotation(settings["rotation"] / 360.0, fill_mode="constant", seed=seed))
    if settings["shift"]:
        steps.append(L.RandomTranslation(settings["shift"], settings["shift"], fill_mode="constant", seed=seed))
    if settings["zoom"]:
        steps.append(L.RandomZoom(settings["zoom"], fill_mode="constant", seed=seed))
    if settings["brightness"]:
        steps.append(L.RandomBrightness(settings["brightness"], value_range=(0, 255), seed=seed))
    if settings["contrast"]:
        steps.append(L.RandomContrast(settings["contrast"], seed=seed))
    if settings["horizontal_flip"]:
        steps.append(L.RandomFlip("horizontal", seed=seed))
    return tf.keras.Sequential(steps, name="augment") if steps else None


# ---- datasets -----------------------------------------------------------------------------------
def source_balanced_weights(counts: dict[tuple[str, str], int], classes: list[str],
                            oversample: dict[str, float], min_images: int) -> dict[tuple[str, tuple[str, ...]], float]:
    """The streams of source-balanced sampling: (class, its sources) -> fraction of every batch.

    ``counts`` is (source, class) -> training images. A class's share is its natural share of the
    split, or ``oversample``'s fraction for the classes it names (the rest of the batch then goes to
    the other classes in their natural mix). Within a class the share is split equally among its
    sources; sources with fewer than ``min_images`` images of the class form one pooled stream that
    counts as one source. The fractions sum to 1 (when ``oversample`` names every class that has
    images, its fractions are scaled up to 1)."""
    per_class: dict[str, dict[str, int]] = {c: {} for c in classes}
    for (source, label), n in sorted(counts.items()):
        if n > 0 and label in per_class:
            per_class[label][source] = n
    n_class = {c: sum(v.values()) for c, v in per_class.items()}
    for c in oversample:
        if n_class.get(c, 0) == 0:
            raise DatasetError(f"cannot oversample {c!r}: the training split has no such images")
    rest, free = sum(n for c, n in n_class.items() if c not in oversample), 1.0 - sum(oversample.values())
    share = {c: oversample[c] if c in oversample else free * n_class[c] / max(rest, 1) for c in classes}
    total = sum(share[c] for c in classes if n_class[c])
    if total <= 0:
        raise DatasetError("the training split has no images")
    out: dict[tuple[str, tuple[str, ...]], float] = {}
    for c in classes:
        own = [(src,) for src, n in per_class[c].items() if n >= min_images]
        pooled = tuple(src for src, n in per_class[c].items() if n < min_images)
        streams = own + ([pooled] if pooled else [])
        for sources in streams:
            out[(c, sources)] = share[c] / total / len(streams)
    return out


def steps_per_epoch(info: DatasetInfo, split: str, batch_size: int, size: int, cap: int | None = None) -> int:
    """One pass over the split by all ranks together; identical on every rank."""
    steps = max(1, math.ceil(info.size(split) / (batch_size * size)))
    return min(steps, cap) if cap else steps


def train_dataset(info: DatasetInfo, tcfg, rank: int, size: int, stack: contextlib.ExitStack,
                  source_index: dict[str, int] | None = None) -> tf.data.Dataset:
    """The infinite, shuffled, augmented, batched training stream of this rank: batches of
    ``(image, one-hot label)``, or with ``source_index`` (source -> integer, e.g. the adversary's)
    ``({"image": image, "source": index}, one-hot label)``.

    ``tcfg`` is a :class:`cxrspark.config.TrainConfig`; readers are closed when ``stack`` closes."""
    split = tcfg.train_split
    seed = tcfg.seed + 1000 * rank
    decode = _decode(info.image_size, len(info.classes), source_index)
    over = {info.classes.index(c): f for c, f in tcfg.imbalance.oversample.items()}

    def label(row) -> tf.Tensor:
        return tf.cast(row.label_index, tf.int32)

    def stream(keep=None, shard=True, buffer: int = tcfg.shuffle_buffer) -> tf.data.Dataset:
        reader, thin = _reader(info, split, rank, size, repeat=True, shuffle=True, seed=seed,
                               workers=tcfg.reader_workers, shard=shard)
        stack.callback(lambda: (reader.stop(), reader.join()))
        ds = _rows(reader, thin, rank, size, info.sources)
        if info.exclude_lung_flagged:
            ds = ds.filter(lambda row: row.lung_mask_ok)
        if keep is not None:
            ds = ds.filter(keep)
        ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE)
        return ds.shuffle(buffer, seed=seed)

    if tcfg.balance.sources:
        counts = info.source_counts.get(split, {})
        streams = source_balanced_weights(counts, info.classes, tcfg.imbalance.oversample, tcfg.balance.min_images)
        # the streams share train.shuffle_buffer (memory, and the images read before the first batch)
        share = max(1, tcfg.shuffle_buffer // len(streams))
        parts = [stream(lambda row, k=info.classes.index(c), s=tf.constant(sources):
                        tf.logical_and(tf.equal(label(row), k), tf.reduce_any(tf.equal(row.source, s))),
                        shard=False, buffer=min(share, sum(counts.get((src, c), 0) for src in sources)))
                 for c, sources in streams]
        ds = tf.data.Dataset.sample_from_datasets(parts, weights=list(streams.values()), seed=seed)
    elif over:
        present = info.counts[split]
        for c in tcfg.imbalance.oversample:
            if present.get(c, 0) == 0:
                raise DatasetError(f"cannot oversample {c!r}: the {split} split has no such images")
        minority = list(over)
        parts = [stream(lambda row, c=c: tf.equal(label(row), c), shard=False) for c in minority]
        rest = tf.constant(minority, tf.int32)
        parts.append(stream(lambda row: tf.logical_not(tf.reduce_any(tf.equal(label(row), rest))), shard=False))
        weights = [over[c] for c in minority] + [1.0 - sum(over.values())]
        ds = tf.data.Dataset.sample_from_datasets(parts, weights=weights, seed=seed)
    else:
        ds = stream()
    ds = ds.batch(tcfg.batch_size, drop_remainder=True)
    augment = make_augmenter(tcfg.augment.resolved(), seed)
    if augment is not None:
        def augmented(x, y):
            image = tf.clip_by_value(augment(x["image"] if isinstance(x, dict) else x, training=True), 0.0, 255.0)
            return ({**x, "image": image} if isinstance(x, dict) else image), y
        ds = ds.map(augmented, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def eval_batches(info: DatasetInfo, split: str, rank: int, size: int, batch_size: int,
                 workers: int = 2) -> Iterator[dict[str, np.ndarray]]:
    """This rank's share of a split, once, in numpy batches: image (n, s, s, 1) float32, label_index,
    record_id, source, patient_key. Shares of all ranks are disjoint and cover the split."""
    with contextlib.ExitStack() as stack:
        reader, thin = _reader(info, split, rank, size, repeat=False, shuffle=False, seed=0, workers=workers)
        stack.callback(lambda: (reader.stop(), reader.join()))
        ds = _rows(reader, thin, rank, size, info.sources).batch(batch_size)
        for b in ds.as_numpy_iterator():
            n = len(b.label_index)
            images = np.frombuffer(b"".join(b.image), np.uint8).reshape(n, info.image_size, info.image_size, 1)
            yield {"image": images.astype(np.float32), "label_index": b.label_index.astype(np.int64),
                   **{k: np.array([_text(v) for v in getattr(b, k)], dtype=object)
                      for k in ("record_id", "source", "patient_key")}}


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)
