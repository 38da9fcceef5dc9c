"""The canonical schema, defined once.

Every source adapter yields :class:`SourceRecord` objects; the ingest pipeline turns them into rows of
the Spark schemas below. Writer (ingest) and reader (train) both derive their columns from here.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

# Outcomes: every input row ends in exactly one of these.
CURATED = "curated"
FILTERED = "filtered"
DUPLICATE = "duplicate"
QUARANTINED = "quarantined"
OUTCOMES = (CURATED, FILTERED, DUPLICATE, QUARANTINED)

# Normalised view vocabulary. Frontal views are the ones ingest keeps.
FRONTAL_VIEWS = ("PA", "AP", "AP Supine", "AP Erect", "AP Semi Erect")
LATERAL_VIEWS = ("Lateral",)
UNKNOWN_VIEW = "unknown"


@dataclass
class SourceRecord:
    """One input row of one source, already in the canonical vocabulary (no pixels yet).

    ``error`` set means the row could not be mapped (missing file, path outside the source root,
    malformed metadata row...): the pipeline quarantines it with that reason instead of decoding it.
    """

    record_id: str  # unique and stable across runs: "<source>:<row or relative path>"
    source: str
    source_path: str  # path relative to the source root, as the source names it
    path: str | None  # absolute path of the image file (None when it could not be resolved)
    label: str | None  # COVID-19 / Normal / Pneumonia, or None when the finding is unusable
    finding: str  # the source's original finding/class text, kept verbatim
    patient_key: str  # namespaced by source: "cohen:97"
    view: str = UNKNOWN_VIEW
    modality: str = "X-ray"
    sex: str | None = None  # "M" / "F"
    age: int | None = None  # years
    license: str | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    error: str | None = None  # quarantine reason when the row is unusable before decoding

    def to_row(self) -> dict[str, Any]:
        row = asdict(self)
        row["provenance"] = json.dumps(self.provenance, sort_keys=True, ensure_ascii=False)
        return row


RECORD_COLUMNS = tuple(f.name for f in fields(SourceRecord))

# Spark DDL of the record table (same order as SourceRecord).
RECORD_DDL = (
    "record_id string, source string, source_path string, path string, label string, "
    "finding string, patient_key string, view string, modality string, sex string, age int, "
    "license string, provenance string, error string"
)

# Columns the decode UDF adds (see cxrspark.spark.udfs). The kp_* columns are the near-duplicate
# search's working image and keypoints (cxrspark.images.keypoints); they stay in the ingest's work
# table and are not written to curated/.
DECODED_DDL = (
    "image binary, height int, width int, orig_height int, orig_width int, orig_format string, "
    "orig_mode string, pixel_sha256 string, phash long, kp_image binary, kp_height int, kp_width int, "
    "kp_xy binary, kp_desc binary, kp_keys array<bigint>, decode_error string"
)

# Columns of the lung segmentation stage (cxrspark.spark.udfs.make_segment_udf): the stored image
# (full, lung-cropped or lung-masked), the lung mask as a 1-bit PNG in the full (uncropped) image's frame, and QC.
# With ``ingest.segmentation: none`` the lung columns are null.
SEGMENTED_DDL = (
    "image binary, lung_mask binary, lung_area_fraction double, lung_components int, "
    "lung_mask_ok boolean, lung_qc string"
)
# Columns of batch prediction's classifier UDF (cxrspark.spark.udfs.make_classify_udf): probabilities
# in the model's class order, the most probable class and its probability; null for unreadable images.
PREDICTED_DDL = "probabilities array<float>, predicted string, confidence double"

LUNG_COLUMNS = tuple(c.split()[0] for c in SEGMENTED_DDL.split(", ") if not c.startswith("image "))

# The curated table: canonical columns + image + split bookkeeping. Petastorm's make_batch_reader
# reads it as plain Parquet; `image` holds raw uint8 pixels, row-major, shape (height, width).
CURATED_COLUMNS = (
    "record_id", "source", "source_path", "label", "label_index", "finding", "patient_key",
    "split_group", "dup_group", "view", "modality", "sex", "age", "license", "provenance",
    "image", "height", "width", "orig_height", "orig_width", "orig_format", "orig_mode",
    "pixel_sha256", "phash", *LUNG_COLUMNS, "split",
)
