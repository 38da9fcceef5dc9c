"""COVIDx (the dataset of COVID-Net, github.com/lindawangg/COVID-Net): a re-packaging of several public
collections with its own published train/test split.

Layout: label files such as ``train_COVIDx9A.txt`` and ``test_COVIDx9A.txt`` (one image per line,
space-separated ``patientid filename label source``), and the images in ``train/`` and ``test/``.

Every record keeps COVIDx's own split as ``provenance.published_split`` (taken from the label file's
name: ``train``, ``test`` or ``val``), which the leak audit (``jobs/audit.py``) reads; the ingest
itself splits by patient as for any source.

Options:

* ``labels``: ``auto`` (default) takes every ``train*.txt``, ``val*.txt`` and ``test*.txt`` at the root;
  a name or a list of names (relative to the root) is used as given. The published split is the part of
  the file name before the first ``_`` (``train_COVIDx9A.txt`` -> ``train``).
* ``image_dir``: where a file of a given split lies, relative to the root; ``{split}`` is replaced by the
  published split (default ``{split}``: COVIDx's ``train/``, ``test/``).
* ``origin_dirs``: ``{origin: folder}`` (relative to the root) for images of one original collection kept
  in that collection's own layout (e.g. ``{cohen: cxr/cohen/images}``): the file is looked up there
  first, then in ``image_dir``.
* ``nih_map``: as the ``rsna`` adapter's (``{matches, metadata, max_mse}``): RSNA rows (COVIDx's
  ``rsna`` and its typo ``rnsa``) carry RSNA's per-IMAGE id as patient id; with the map they get NIH's
  cross-archive key ``nih:<Patient ID>``.
* ``encoding``: of the label files (default utf-8).

Traps handled:

* Some patient ids contain spaces: a line is parsed from the right (the last three fields are filename,
  label and source; the rest is the patient id). A line with fewer than four fields is a
  ``malformed_row`` record.
* Labels: ``normal``, ``pneumonia``, ``COVID-19`` (labels.py maps them); the binary variant's
  ``positive`` is COVID-19 and ``negative`` (not COVID-19: normal or pneumonia) is unusable for three
  classes (filtered with its text).
* Patient identity: the patient key is namespaced by the ORIGINAL collection, in the names cxrspark's own
  adapters use (``cohen``, ``figure1`` for ``fig1``, ``actualmed`` for ``actmed``, ``rsna`` for ``rnsa``,
  ``sirm``, ``ricord``, ``bimcv``, ``stonybrook``): ``cohen:<patientid>``, so a COVIDx patient is the same
  key as that collection's own source's. ``provenance.identity_rule`` says which rule built the key.
* A file listed twice for one split (in one label file, or in two label files of the same split, e.g.
  two COVIDx versions) would repeat a record id: the repeat is a ``malformed_row`` record naming the
  first. The same file in two splits is two records: the audit reports it. A line whose bytes are not
  valid in ``encoding`` is a ``bad_encoding`` record.
"""
from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from cxrspark.schema import SourceRecord
from cxrspark.sources._common import under
from cxrspark.sources.base import SourceAdapter, SourceError, register
from cxrspark.sources.nih import nih_key
from cxrspark.sources.rsna import load_nih_map

#: COVIDx's source names -> the collection names (and patient key spaces) of cxrspark's adapters
ORIGINS = {"fig1": "figure1", "actmed": "actualmed", "rnsa": "rsna"}
#: the binary variant's labels -> a finding text labels.py maps (or leaves unusable)
BINARY = {"positive": "COVID-19", "negative": "negative (not COVID-19: normal or pneumonia)"}
_SPLIT_FILE = re.compile(r"^(train|val|test)[^/]*\.txt$", re.IGNORECASE)


def parse_line(line: str) -> tuple[str, str, str, str] | None:
    """(patient id, filename, label, source) of one label-file line, parsed from the right; None when it
    has fewer than four fields."""
    parts = line.split()
    if len(parts) < 4:
        return None
    return " ".join(parts[:-3]), parts[-3], parts[-2], parts[-1]


@register
class CovidxAdapter(SourceAdapter):
    kind = "covidx"
    default_options = {"labels": "auto", "image_dir": "{split}", "origin_dirs": {}, "nih_map": None,
                       "encoding": "utf-8"}

    def label_files(self) -> list[str]:
        option = self.options["labels"]
        if option not in (None, "", "auto"):
            return [option] if isinstance(option, str) else [str(x) for x in option]
        found = sorted(p.name for p in self.root.iterdir() if p.is_file() and _SPLIT_FILE.match(p.name))
        if not found:
            raise SourceError(f"source {self.name!r}: no train*/val*/test*.txt label file in {self.root}")
        return found

    def records(self) -> Iterator[SourceRecord]:
        self.check_root()
        links = load_nih_map(self.options["nih_map"], self.name) if self.options["nih_map"] else {}
        origin_dirs = dict(self.options["origin_dirs"] or {})
        seen: dict[tuple[str, str], str] = {}  # (split, file name) -> label file (a repeat would repeat an id)
        for name in self.label_files():
            path = self.root / name
            if not path.is_file():
                raise SourceError(f"source {self.name!r}: label file {path} does not exist")
            split = path.name.split("_")[0].split(".")[0].lower()
            with path.open("rb") as fh:
                for lineno, raw in enumerate(fh, 1):
                    try:
                        line = raw.decode(self.options["encoding"])
                    except UnicodeDecodeError as exc:
                        yield self._unreadable(name, split, lineno, f"is not valid {self.options['encoding']} ({exc.reason})",
                                               code="bad_encoding")
                        continue
                    if not line.strip():
                        continue
                    parsed = parse_line(line)
                    if parsed is None:
                        yield self._unreadable(name, split, lineno, "has fewer than 4 fields")
                        continue
                    if (split, parsed[1]) in seen:
                        yield self._unreadable(name, split, lineno, f"repeats {parsed[1]!r} of {seen[split, parsed[1]]}")
                        continue
                    seen[split, parsed[1]] = name
                    yield self._record(name, split, lineno, *parsed, origin_dirs=origin_dirs, links=links)

    def _unreadable(self, label_file: str, split: str, lineno: int, why: str, code: str = "malformed_row"
                    ) -> SourceRecord:
        """A line that cannot be used (its id names the label file: two files may both have a line 5)."""
        tag = f"{label_file.rsplit('/', 1)[-1]}:L{lineno}"
        return self.record(tag, source_path="", path=None, finding="", patient_id=f"unknown-{tag}",
                           provenance={"metadata": label_file, "line": lineno},
                           error=f"{code}: line {lineno} of {label_file} {why}")

    def _record(self, label_file: str, split: str, lineno: int, patient: str, filename: str, label: str,
                source: str, *, origin_dirs: dict[str, str], links: dict[str, dict[str, Any]]) -> SourceRecord:
        origin = ORIGINS.get(source.lower(), source.lower())
        folders = [d for d in (origin_dirs.get(source), origin_dirs.get(origin)) if d]
        folders.append(self.options["image_dir"].replace("{split}", split))
        candidates = list(dict.fromkeys(under(f, filename) for f in folders))
        path, error = self.resolve(candidates[0]) if len(candidates) == 1 else self.resolve_any(candidates)
        provenance: dict[str, Any] = {"metadata": label_file, "line": lineno, "published_split": split,
                                      "covidx_source": source, "covidx_patient_id": patient, "covidx_label": label}
        key = f"{origin}:{patient}"
        provenance["identity_rule"] = f"covidx: patient id of the original collection ({origin})"
        if origin == "rsna" and self.options["nih_map"]:
            link = links.get(patient) or {"why": "nih_map: no NIH image matched"}
            if link.get("nih_patient_id"):
                key = nih_key(link["nih_patient_id"])
                provenance.update(identity_rule=link["rule"], nih_image_index=link["nih_image_index"],
                                  nih_mse=link["nih_mse"])
            else:
                provenance["identity_rule"] += f"; unlinked: {link['why']}"
        if origin == "rsna" and key.startswith("rsna:"):
            provenance["per_image_id"] = True  # RSNA's patientId names an image, not a person
        return self.record(
            f"{split}/{filename}",
            source_path=candidates[-1],
            path=path,
            finding=BINARY.get(label.lower(), label),
            patient_id=patient,
            linked_patient_key=key,
            provenance=provenance,
            error=error,
        )

    def identity_warning(self) -> str | None:
        if self.options["nih_map"]:
            return None
        return ("COVIDx's RSNA rows carry RSNA's per-image ids as patient ids: without options.nih_map each such "
                "image is its own patient")
