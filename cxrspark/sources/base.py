"""The source adapter contract and the registry.

An adapter turns one public dataset, in its own folder layout and metadata format, into
:class:`~cxrspark.schema.SourceRecord` rows. It reads metadata only (no pixels) and never raises on a
bad row: a row it cannot map is yielded with ``error`` set, so the pipeline quarantines it.

Adding a source = one small module that subclasses :class:`SourceAdapter`, sets ``kind`` and is
decorated with :func:`register`; then list it in ``conf/sources.yaml``.
"""
from __future__ import annotations

import csv
import gzip
import io
import json
import os
import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, ClassVar

from cxrspark.labels import normalise_finding
from cxrspark.schema import FRONTAL_VIEWS, LATERAL_VIEWS, UNKNOWN_VIEW, SourceRecord

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm", ".dicom")

#: separates the candidate paths of :meth:`SourceAdapter.resolve_any` (a file path cannot hold a NUL)
PATH_SEP = "\0"

_REGISTRY: dict[str, type["SourceAdapter"]] = {}


class SourceError(Exception):
    """A whole source cannot be read (its root or metadata file is missing or unreadable)."""


def register(cls: type["SourceAdapter"]) -> type["SourceAdapter"]:
    if not getattr(cls, "kind", None):
        raise TypeError(f"{cls.__name__} must set a 'kind'")
    if cls.kind in _REGISTRY and _REGISTRY[cls.kind] is not cls:
        raise TypeError(f"source kind {cls.kind!r} registered twice")
    _REGISTRY[cls.kind] = cls
    return cls


def adapter_kinds() -> list[str]:
    _load_builtin()
    return sorted(_REGISTRY)


def make_adapter(kind: str, name: str, root: str | os.PathLike, options: dict[str, Any] | None = None
                 ) -> "SourceAdapter":
    _load_builtin()
    if kind not in _REGISTRY:
        raise KeyError(f"unknown source kind {kind!r}; known: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[kind](name=name, root=root, options=options or {})


def _load_builtin() -> None:
    # Importing the package registers every built-in adapter module.
    import cxrspark.sources  # noqa: F401


class SourceAdapter(ABC):
    """Contract: ``records()`` yields one SourceRecord per input row, in a stable order."""

    kind: ClassVar[str] = ""
    #: options this adapter accepts in conf/sources.yaml (name -> default)
    default_options: ClassVar[dict[str, Any]] = {}

    def __init__(self, name: str, root: str | os.PathLike, options: dict[str, Any]):
        unknown = set(options) - set(self.default_options)
        if unknown:
            raise ValueError(f"source {name!r} ({self.kind}): unknown option(s) {sorted(unknown)}; "
                             f"known: {sorted(self.default_options)}")
        self.name = name
        self.root = Path(root).resolve()
        self.options = {**self.default_options, **options}

    @abstractmethod
    def records(self) -> Iterator[SourceRecord]:
        """Yield every input row. Raise SourceError only when the source as a whole is unreadable."""

    # ---- helpers shared by adapters -------------------------------------------------------------
    def check_root(self) -> None:
        if not self.root.is_dir():
            raise SourceError(f"source {self.name!r}: root folder {self.root} does not exist")

    def resolve(self, relative: str) -> tuple[str | None, str | None]:
        """The absolute path a file name from metadata names under the root: (path, error).

        Only what the name itself shows is checked here (empty, absolute, ``..`` leading out of the
        root): the adapter runs on the driver and must not touch every file. Whether the file exists and
        whether it really lies under the root (symlinks leading out) is checked per file in the
        executors, by :meth:`finish`.
        """
        if not relative or not str(relative).strip():
            return None, "missing_file: empty file name"
        rel = str(relative).strip()
        if os.path.isabs(rel) or rel.startswith(("/", "\\")):
            return None, f"path_outside_root: absolute path {rel!r}"
        candidate = os.path.normpath(os.path.join(str(self.root), rel))
        if candidate != str(self.root) and not candidate.startswith(str(self.root) + os.sep):
            return None, f"path_outside_root: {rel!r} resolves outside {self.root}"
        return candidate, None

    def resolve_any(self, relatives: Iterable[str]) -> tuple[str | None, str | None]:
        """Like :meth:`resolve` for a file that may lie at any of several names (other extensions, other
        subfolders): the per-file check in the executors takes the first that exists."""
        paths = []
        for rel in relatives:
            path, error = self.resolve(rel)
            if error:
                return None, error
            paths.append(path)
        if not paths:
            return None, "missing_file: no file name"
        return PATH_SEP.join(paths), None

    def identity_warning(self) -> str | None:
        """A warning when this source's patient ids are known not to identify patients (e.g. per-image
        ids): the ingest logs it. The records concerned carry ``provenance.per_image_id = true`` and the
        summary counts them (the images split as their own patients). Default: None."""
        return None

    def file_fields(self, path: str) -> dict[str, Any]:
        """Fields read from the file itself (e.g. a DICOM header): SourceRecord field -> value, and
        ``provenance`` -> a dict merged into the record's. Runs in the executors, once per existing file.
        Default: nothing."""
        return {}

    def finish(self, row: dict[str, Any]) -> dict[str, Any]:
        """The per-file part of a record (a :meth:`SourceRecord.to_row` dict; runs in the executors):
        the file exists and lies under the root, the first existing candidate of :meth:`resolve_any` is
        taken, and :meth:`file_fields` is read. A failed check sets ``error`` (the row is quarantined)."""
        if row.get("error") is not None or not row.get("path"):
            return row
        out = dict(row)
        root = os.path.realpath(self.root)
        candidates = row["path"].split(PATH_SEP)
        error = None
        for candidate in candidates:
            rel = os.path.relpath(candidate, self.root)
            real = os.path.realpath(candidate)
            if real != root and not real.startswith(root + os.sep):
                error = f"path_outside_root: {rel!r} resolves outside {self.root}"
                break
            if os.path.isfile(real):
                out["path"] = real
                if len(candidates) > 1:
                    out["source_path"] = Path(rel).as_posix()
                break
        else:
            rels = [Path(os.path.relpath(c, self.root)).as_posix() for c in candidates]
            error = f"missing_file: {rels[0]}" if len(rels) == 1 else f"missing_file: none of {', '.join(rels)}"
        if error:
            out.update(path=None, error=error)
            return out
        fields = self.file_fields(out["path"])
        if fields:
            extra = fields.pop("provenance", None)
            out.update(fields)
            if extra:
                out["provenance"] = json.dumps({**json.loads(out["provenance"] or "{}"), **extra},
                                               sort_keys=True, ensure_ascii=False)
        return out

    def checked_records(self) -> Iterator[SourceRecord]:
        """``records()`` with the per-file part (:meth:`finish`) done here, in this process (tests, small
        tools; the ingest does it in the executors)."""
        for rec in self.records():
            row = self.finish(rec.to_row())
            yield SourceRecord(**{**row, "provenance": json.loads(row["provenance"] or "{}")})

    def key(self, patient_id: str) -> str:
        return f"{self.name}:{patient_id}"

    def record(self, row_id: str, *, source_path: str, path: str | None, finding: str, patient_id: str,
               error: str | None = None, linked_patient_key: str | None = None, **fields: Any) -> SourceRecord:
        """A SourceRecord of this source. The derived fields are made here and only here: the record id
        and patient key are namespaced by the source name, and the label always comes from
        :func:`cxrspark.labels.normalise_finding` of the original finding, which is kept verbatim.

        ``linked_patient_key`` is another source's key for the same patient (an image this source
        re-publishes); it replaces this source's own key so the split keeps both together."""
        return SourceRecord(record_id=f"{self.name}:{row_id}", source=self.name, source_path=source_path,
                            path=path, label=normalise_finding(finding), finding=finding,
                            patient_key=linked_patient_key or self.key(patient_id), error=error, **fields)

    def list_images(self, folder: Path) -> list[Path]:
        """Image files under ``folder``, recursively, in a stable (sorted) order.

        Symlinks with an image suffix are listed whatever they point to (outside the root, nowhere,
        a pipe): :meth:`resolve` then refuses them with a reason instead of letting them vanish.
        """
        out = [p for p in folder.rglob("*")
               if (p.is_file() or p.is_symlink()) and p.suffix.lower() in IMAGE_SUFFIXES]
        return sorted(out, key=lambda p: p.relative_to(self.root).as_posix())

    def read_csv(self, filename: str, encoding: str = "utf-8", required_columns: Iterable[str] = (),
                 delimiter: str | None = ",", title_line: bool = False
                 ) -> Iterator[tuple[int, dict | None, str | None]]:
        """Yield (line_number, row dict or None, error) for each data row of a metadata CSV.

        A row whose bytes are not valid in ``encoding`` or whose field count differs from the
        header is yielded with an error instead of stopping the whole file. When the header lacks
        one of ``required_columns`` (the columns the adapter cannot work without), every data row is
        yielded with a ``missing_column`` error, so each is quarantined and counted.
        ``delimiter=None``: a tab in the header line means tab-separated, else comma-separated.
        ``title_line``: a first line without the first required column is a title (a spreadsheet
        export) and the header is the next line.
        """
        rows = self._csv_rows(filename, encoding, delimiter, tuple(required_columns)[:1] if title_line else ())
        header = next(rows)
        missing = [c for c in required_columns if c not in header]
        error = f"missing_column: {filename} has no column(s) {missing}" if missing else None
        for lineno, row, row_error in rows:
            yield (lineno, None, error) if error else (lineno, row, row_error)

    def _csv_rows(self, filename: str, encoding: str, delimiter: str | None = ",",
                  title_unless: tuple[str, ...] = ()) -> Iterator[Any]:
        """The header (a list of names), then read_csv's (line_number, row, error) tuples."""
        path = self.root / filename
        if not path.is_file():
            raise SourceError(f"source {self.name!r}: metadata file {path} does not exist")
        # streamed line by line (a 10^6-row file is never held whole); csv needs whole records (quoted
        # fields may hold newlines): decode line by line, then parse
        opener = gzip.open if path.name.endswith(".gz") else open
        with opener(path, "rb") as fh:
            yield from self._parse_lines(fh, path, encoding, delimiter, title_unless)

    def _parse_lines(self, fh: Any, path: Path, encoding: str, delimiter: str | None = ",",
                     title_unless: tuple[str, ...] = ()) -> Iterator[Any]:
        def decoded() -> Iterator[tuple[int, str | None, str | None]]:
            for i, raw in enumerate(fh, start=1):
                try:
                    yield i, raw.decode(encoding), None
                except UnicodeDecodeError as exc:
                    yield i, None, f"bad_encoding: line {i} is not valid {encoding} ({exc.reason})"

        text_lines = decoded()
        first = next(text_lines, None)
        if first is None or first[1] is None:
            raise SourceError(f"source {self.name!r}: cannot read the header of {path} as {encoding}")
        head = first[1].lstrip("\ufeff").rstrip("\r\n")
        sep = delimiter or ("\t" if "\t" in head else ",")
        header = next(csv.reader([head], delimiter=sep), [])
        if title_unless and title_unless[0] not in header:  # a title line: the header is the next line
            second = next(text_lines, None)
            if second is None or second[1] is None:
                raise SourceError(f"source {self.name!r}: cannot read the header of {path} as {encoding}")
            head = second[1].rstrip("\r\n")
            sep = delimiter or ("\t" if "\t" in head else ",")
            header = next(csv.reader([head], delimiter=sep), [])
        delimiter = sep
        yield header
        pending: list[str] = []
        start = 0
        for lineno, text, err in text_lines:
            if err is not None:
                if pending:  # a broken line inside a quoted record breaks the whole record
                    yield start, None, err
                    pending = []
                else:
                    yield lineno, None, err
                continue
            if not pending:
                start = lineno
            pending.append(text)
            joined = "".join(pending)
            if joined.count('"') % 2 == 1:
                continue  # inside a quoted field that spans lines
            pending = []
            if not joined.strip():
                continue
            try:
                values = next(csv.reader(io.StringIO(joined), delimiter=delimiter))
            except csv.Error as exc:  # e.g. a field over csv's size limit: this row, not the file
                yield start, None, f"malformed_row: line {start}: {exc}"
                continue
            if len(values) != len(header):
                yield start, None, (f"malformed_row: line {start} has {len(values)} fields, "
                                    f"header has {len(header)}")
                continue
            yield start, dict(zip(header, values)), None
        if pending:
            yield start, None, f"malformed_row: unterminated quote from line {start}"


# ---- vocabulary helpers --------------------------------------------------------------------------
_VIEW_MAP = {
    "pa": "PA", "posteroanterior": "PA",
    "ap": "AP", "anteroposterior": "AP",
    "ap supine": "AP Supine", "supine": "AP Supine",
    "ap erect": "AP Erect", "erect": "AP Erect", "ap upright": "AP Erect",
    "ap semi erect": "AP Semi Erect", "ap semi-erect": "AP Semi Erect", "ap semierect": "AP Semi Erect",
    "l": "Lateral", "lateral": "Lateral", "ll": "Lateral", "rl": "Lateral", "lat": "Lateral",
}


def normalise_view(raw: str | None) -> str:
    """Map a source's view/projection text to the canonical vocabulary (unknown views stay visible)."""
    text = re.sub(r"[\s_]+", " ", str(raw or "")).strip().lower()
    if not text:
        return UNKNOWN_VIEW
    if text in _VIEW_MAP:
        return _VIEW_MAP[text]
    if text.startswith("ct") or text in ("axial", "coronal", "sagittal"):
        return text.title()
    return str(raw).strip()


def normalise_modality(raw: str | None, default: str = "X-ray") -> str:
    text = str(raw or "").strip().lower()
    if not text:
        return default
    if text in ("x-ray", "xray", "x ray", "cr", "dx", "dr", "radiograph"):
        return "X-ray"
    if text in ("ct", "computed tomography"):
        return "CT"
    return str(raw).strip()


def normalise_sex(raw: str | None) -> str | None:
    text = str(raw or "").strip().upper()
    return {"M": "M", "MALE": "M", "F": "F", "FEMALE": "F"}.get(text)


def parse_age(raw: Any) -> int | None:
    """Whole years from '65', '67+', '065Y', 42.0, and DICOM ages in months/weeks/days ('006M' -> 0);
    None when absent or implausible."""
    m = re.match(r"\s*0*(\d{1,3})(?:\.\d*)?\s*([+YyMmWwDd]?)", str(raw or ""))
    if not m:
        return None
    per_year = {"m": 12, "w": 52, "d": 365}.get(m.group(2).lower(), 1)
    age = int(m.group(1)) // per_year
    return age if 0 <= age <= 120 else None


def is_frontal(view: str) -> bool:
    return view in FRONTAL_VIEWS


def is_lateral(view: str) -> bool:
    return view in LATERAL_VIEWS
