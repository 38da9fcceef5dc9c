"""A published train/test split over public images: any CSV that lists image files with a patient and a
split (e.g. the split files researchers publish with a paper, made over Cohen, RSNA, NIH... images).

Every record keeps the published split as ``provenance.published_split``, which the leak audit
(``jobs/audit.py``) reads to report patients and duplicate images present in more than one published
split; the ingest itself splits by patient as for any source.

Layout: one CSV (``.gz`` too), one row per listed image, and the images under the source root (or under
``image_dir``), named by a column that may hold subfolders (``covid/p1/a.png``).

Options:

* ``file`` (required; without it ``records()`` raises SourceError): the CSV, relative to the root; gzipped
  when its name ends in ``.gz``.
* ``columns``: role -> column name, over the defaults ``{file: file, patient: patient, split: split,
  label: label, source: null, view: null}``. ``file``, ``patient`` and ``split`` are required roles (they
  cannot be null); ``label``, ``source`` and ``view`` may be set to null (no such column). Every role that
  names a column must find it in the header: otherwise every row is a ``missing_column`` record (a column
  name mistyped in the config quarantines the rows with the reason instead of silently dropping a role).
* ``image_dir``: the folder the file names are relative to (default: the root).
* ``patient_namespace``: the namespace of the patient key. Default null: the source's own name
  (``<name>:<patient>``). A string such as ``cohen`` makes the key ``cohen:<patient>``, the key of the
  ``cohen`` adapter's patients, so a published split over the Cohen collection names the same patients
  (``nih`` makes NIH's cross-archive key ``nih:<8-digit id>``, zero-padded like the ``nih`` adapter's).
* ``patient_namespace_by_source``: ``{value of the source column: namespace}`` (e.g. ``{rsna: rsna,
  cohen: cohen}``) for a CSV that mixes collections; needs the ``source`` role. A value it does not list
  (exact, else case-insensitive match) falls back to ``patient_namespace``.
* ``delimiter``: ``,`` (default: the file is read by :meth:`SourceAdapter.read_csv`) or any other single
  character (``"\\t"`` or ``tab``, ``" "`` or ``space``, ``;``...): then the file is streamed by this module's
  reader (same outcomes and reasons). With ``" "`` runs of spaces count as one separator and trailing spaces
  are ignored.
* ``encoding``: of the CSV (default utf-8).

Traps handled:

* Quoted fields may hold the delimiter or line breaks (``"covid/a,b.png"``); a record spanning lines is
  numbered by its first line. A row whose field count differs from the header's, an unterminated quote
  or bytes not valid in ``encoding`` make a ``malformed_row`` / ``bad_encoding`` record, never a dropped row.
* The same file listed twice (e.g. in two splits: itself a leak the audit must see) is two records: the
  record id is the row's line number, ``<name>:<line>``.
* An empty split makes the row a quarantined ``malformed_row`` record (with its file and patient kept).
  An empty patient id gets the key ``unknown-L<line>`` (a patient of its own).
* A file name that is absolute or leads out of the root through ``..`` is ``path_outside_root``; an empty
  one ``missing_file`` (:meth:`SourceAdapter.resolve`; existence is checked in the executors).

Identity: ``provenance.identity_rule`` says which rule built the patient key (``source_name``,
``patient_namespace: <ns>``, ``patient_namespace_by_source: <value> -> <ns>``); ``provenance.patient_id``
keeps the CSV's id when the key shows it otherwise (NIH's zero padding). A key in the ``rsna`` or ``vindr``
space carries ``provenance.per_image_id = true`` (those ids name images, not persons; the ingest summary
counts such images), as the ``rsna`` and ``vindr`` adapters mark their own.

Label rule: the label column's text (stripped) is the finding, and the label is labels.py's reading of it
(``normal``, ``pneumonia``, ``COVID-19``, ... map; any other text, and an empty or absent label, is
unusable and the row is filtered with its text). ``provenance`` also holds ``metadata`` (the CSV's name),
``line``, ``published_source`` (the source column's value, when mapped) and ``view_raw`` (when mapped).
"""
from __future__ import annotations

import csv
import gzip
import re
from collections.abc import Iterator
from typing import Any

from cxrspark.schema import UNKNOWN_VIEW, SourceRecord
from cxrspark.sources._common import text, under, unreadable_row
from cxrspark.sources.base import SourceAdapter, SourceError, normalise_view, register
from cxrspark.sources.nih import NIH_KEY_SPACE, nih_key

DEFAULT_COLUMNS = {"file": "file", "patient": "patient", "split": "split", "label": "label", "source": None,
                   "view": None}
REQUIRED_ROLES = ("file", "patient", "split")
_DELIMITER_NAMES = {"tab": "\t", "\\t": "\t", "space": " ", "comma": ",", "semicolon": ";"}
#: key spaces whose ids name an image, not a person (RSNA's patientId, VinDr's image id): records keyed there
#: carry ``provenance.per_image_id`` as that collection's own adapter marks them
PER_IMAGE_NAMESPACES = ("rsna", "vindr")
_SURROGATE = re.compile("[\udc80-\udcff]")  # undecodable bytes under errors="surrogateescape"


@register
class SplitCsvAdapter(SourceAdapter):
    kind = "split_csv"
    default_options = {"file": None, "columns": {}, "image_dir": "", "patient_namespace": None,
                       "patient_namespace_by_source": {}, "delimiter": ",", "encoding": "utf-8"}

    def __init__(self, name: str, root: Any, options: dict[str, Any]):
        super().__init__(name, root, options)
        where = f"source {name!r} (split_csv)"
        columns = self.options["columns"] or {}
        if not isinstance(columns, dict) or set(columns) - set(DEFAULT_COLUMNS):
            raise ValueError(f"{where}: columns must map roles {sorted(DEFAULT_COLUMNS)} to column names, "
                             f"got {columns!r}")
        self.columns: dict[str, str | None] = {**DEFAULT_COLUMNS, **columns}
        for role, column in self.columns.items():
            if column is not None and not (isinstance(column, str) and column):
                raise ValueError(f"{where}: column of role {role!r} must be a name or null, got {column!r}")
        if any(self.columns[role] is None for role in REQUIRED_ROLES):
            raise ValueError(f"{where}: roles {list(REQUIRED_ROLES)} need a column, got {self.columns!r}")
        by_source = self.options["patient_namespace_by_source"] or {}
        namespace = self.options["patient_namespace"]
        if not isinstance(by_source, dict) or not all(isinstance(v, str) and v.strip() for v in by_source.values()):
            raise ValueError(f"{where}: patient_namespace_by_source must map source values to namespaces, "
                             f"got {by_source!r}")
        if by_source and self.columns["source"] is None:
            raise ValueError(f"{where}: patient_namespace_by_source needs the 'source' role in columns")
        if namespace is not None and not (isinstance(namespace, str) and namespace.strip()):
            raise ValueError(f"{where}: patient_namespace must be a name or null, got {namespace!r}")
        self.namespace = namespace.strip() if namespace else None
        self.by_source = {str(k).strip(): v.strip() for k, v in by_source.items()}
        self.by_source_folded = {k.casefold(): v for k, v in self.by_source.items()}
        delimiter = self.options["delimiter"]
        delimiter = _DELIMITER_NAMES.get(delimiter, delimiter) if isinstance(delimiter, str) else delimiter
        if not isinstance(delimiter, str) or len(delimiter) != 1 or delimiter in '"\r\n':
            raise ValueError(f"{where}: delimiter must be one character (or tab/space), got "
                             f"{self.options['delimiter']!r}")
        self.delimiter = delimiter

    # ---- reading ------------------------------------------------------------------------------------
    def rows(self, filename: str) -> Iterator[tuple[int, dict | None, str | None]]:
        """(line number, row or None, error) per data row of ``filename``, as :meth:`SourceAdapter.read_csv`
        gives them, whatever the delimiter."""
        required = [c for c in self.columns.values() if c is not None]
        if self.delimiter == ",":
            return self.read_csv(filename, self.options["encoding"], required)
        return self._read_delimited(filename, required)

    def _read_delimited(self, filename: str, required: list[str]) -> Iterator[tuple[int, dict | None, str | None]]:
        """read_csv for another delimiter: streamed with the csv module itself (which joins quoted
        multi-line fields), ``strict`` so that a broken quote is an error of its row; undecodable bytes
        survive as surrogates and make their row ``bad_encoding``."""
        path = self.root / filename
        if not path.is_file():
            raise SourceError(f"source {self.name!r}: metadata file {path} does not exist")
        encoding = self.options["encoding"]
        opener = gzip.open if path.name.endswith(".gz") else open
        space = self.delimiter == " "
        with opener(path, "rt", encoding=encoding, errors="surrogateescape", newline="") as fh:
            lines = (re.sub(r" +(?=\r?\n?$)", "", line) for line in fh) if space else fh
            reader = csv.reader(lines, delimiter=self.delimiter, strict=True, skipinitialspace=space)
            try:
                header = next(reader, None)
            except csv.Error:
                header = None
            if not header or _SURROGATE.search("".join(header)):
                raise SourceError(f"source {self.name!r}: cannot read the header of {path} as {encoding}")
            header[0] = header[0].lstrip("\ufeff")
            missing = [c for c in required if c not in header]
            missing_error = f"missing_column: {filename} has no column(s) {missing}" if missing else None
            done = reader.line_num
            while True:
                start = done + 1
                try:
                    values = next(reader)
                    error = None
                except StopIteration:
                    return
                except csv.Error as exc:
                    values = None
                    error = (f"malformed_row: unterminated quote from line {start}"
                             if "end of data" in str(exc) else f"malformed_row: line {start}: {exc}")
                done = reader.line_num
                if values == []:
                    continue  # a blank line
                if values is not None and _SURROGATE.search("".join(values)):
                    error = f"bad_encoding: line {start} is not valid {encoding}"
                elif values is not None and len(values) != len(header):
                    error = f"malformed_row: line {start} has {len(values)} fields, header has {len(header)}"
                if missing_error or error:
                    yield start, None, missing_error or error
                else:
                    yield start, dict(zip(header, values)), None

    # ---- records ------------------------------------------------------------------------------------
    def records(self) -> Iterator[SourceRecord]:
        self.check_root()
        metadata = self.options["file"]
        if not isinstance(metadata, str) or not metadata.strip():
            # checked here, not when the adapter is built: a source without its file is unreadable as a whole
            raise SourceError(f"source {self.name!r} (split_csv): option 'file' (the split CSV, relative to the "
                              f"root) is required, got {metadata!r}")
        metadata = metadata.strip()
        for lineno, row, error in self.rows(metadata):
            if row is None:
                yield unreadable_row(self, lineno, error or "malformed_row: unreadable", metadata)
                continue
            yield self._record(lineno, row, metadata)

    def _cell(self, row: dict[str, Any], role: str) -> str:
        column = self.columns[role]
        return text(row.get(column)) if column is not None else ""

    def patient_key(self, patient: str, origin: str) -> tuple[str, str]:
        """(patient key, identity rule) of a CSV patient id and the row's source value."""
        namespace, rule = self.namespace, f"patient_namespace: {self.namespace}"
        if origin:
            mapped = self.by_source.get(origin) or self.by_source_folded.get(origin.casefold())
            if mapped:
                namespace, rule = mapped, f"patient_namespace_by_source: {origin} -> {mapped}"
        if namespace is None:
            return self.key(patient), "source_name"
        if namespace == NIH_KEY_SPACE:
            return nih_key(patient), rule
        return f"{namespace}:{patient}", rule

    def _record(self, lineno: int, row: dict[str, Any], metadata: str) -> SourceRecord:
        name = self._cell(row, "file")
        source_path = under(self.options["image_dir"] or "", name) if name else ""
        path, error = self.resolve(source_path)  # an empty name: missing_file
        split = self._cell(row, "split")
        if not split:
            error = f"malformed_row: line {lineno} has an empty split"
        patient = self._cell(row, "patient") or f"unknown-L{lineno}"
        origin = self._cell(row, "source")
        key, rule = self.patient_key(patient, origin)
        provenance: dict[str, Any] = {"metadata": metadata, "line": lineno, "published_split": split,
                                      "identity_rule": rule}
        if key.split(":", 1)[1] != patient:
            provenance["patient_id"] = patient
        if key.split(":", 1)[0] in PER_IMAGE_NAMESPACES:
            provenance["per_image_id"] = True
        if self.columns["source"] is not None:
            provenance["published_source"] = origin
        view = UNKNOWN_VIEW
        if self.columns["view"] is not None:
            view_raw = self._cell(row, "view")
            provenance["view_raw"] = view_raw
            view = normalise_view(view_raw)
        return self.record(
            str(lineno),
            source_path=source_path,
            path=path,
            finding=self._cell(row, "label"),
            patient_id=patient,
            linked_patient_key=key,
            view=view,
            provenance=provenance,
            error=error,
        )
