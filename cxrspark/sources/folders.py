"""Class-per-folder sources: the folder an image lies in is its finding; there is no metadata row.

* ``darkcovidnet``: DarkCovidNet (Ozturk et al., github.com/muhammedtalo/COVID-19),
  ``X-Ray Image DataSet/{Covid-19,No_findings,Pneumonia}/``; NIH file names carry the patient id.
* ``kermany``: Kermany et al. / Mooney "Chest X-Ray Images (Pneumonia)": every ``NORMAL`` or
  ``PNEUMONIA`` folder under the root (``train|test|val/...``, ``dataset/train/...``); file names
  carry the patient id and, for pneumonia, bacteria/virus.
* ``covid_radiography``: the COVID-19 Radiography Database (Chowdhury et al., Rahman et al.): class
  folders ``COVID``, ``Normal``, ``Viral Pneumonia``, ``Lung_Opacity`` under the root or one subfolder,
  images directly in them or in ``<class>/images/`` (``masks/`` ignored), optional
  ``<class>.metadata.xlsx`` (or ``.csv``) giving each image's origin URL.

Class folders record no view: these collections are frontal by curation, so the view is 'unknown'
(kept by the pipeline). Record ids are ``<name>:<path relative to the root>``.
"""
from __future__ import annotations

import csv
import os
import re
from abc import abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from cxrspark.schema import SourceRecord
from cxrspark.sources.base import SourceAdapter, SourceError, register


@dataclass
class ClassFolder:
    folder: Path  # absolute
    finding: str  # the folder's class text, verbatim
    provenance: dict[str, Any] = field(default_factory=dict)  # added to every record of the folder
    metadata: dict[str, Any] = field(default_factory=dict)  # adapter-private per-folder data


class ClassFolderAdapter(SourceAdapter):
    """Base for class-per-folder layouts: subclasses list the class folders and parse file names."""

    license: ClassVar[str | None] = None

    @abstractmethod
    def class_folders(self) -> list[ClassFolder]:
        """The class folders of this source (raise SourceError when there are none)."""

    def images(self, cls: ClassFolder) -> list[Path]:
        return self.list_images(cls.folder)

    def describe(self, image: Path, cls: ClassFolder) -> tuple[str, str, dict[str, Any]]:
        """(patient id, finding, extra provenance) of one image; default: file stem, folder class."""
        return image.stem, cls.finding, {}

    def records(self) -> Iterator[SourceRecord]:
        self.check_root()
        items: list[tuple[str, Path, ClassFolder]] = []
        for cls in self.class_folders():
            for image in self.images(cls):
                items.append((image.relative_to(self.root).as_posix(), image, cls))
        items.sort(key=lambda item: item[0])
        for rel, image, cls in items:
            path, error = self.resolve(rel)
            patient, finding, extra = self.describe(image, cls)
            provenance = {"class_folder": cls.folder.relative_to(self.root).as_posix(), **cls.provenance,
                          **extra}
            linked = provenance.get("linked_patient_key")
            yield self.record(
                rel,
                source_path=rel,
                path=path,
                finding=finding,
                patient_id=patient,
                linked_patient_key=linked,
                license=self.license,
                provenance=provenance,
                error=error,
            )


def _subdirs(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.is_dir() and not p.name.startswith((".", "__MACOSX"))),
                  key=lambda p: p.name)


# ---- DarkCovidNet ---------------------------------------------------------------------------------
_NIH_NAME = re.compile(r"^(\d{8})_(\d{3})\.png$", re.IGNORECASE)


@register
class DarkCovidNetAdapter(ClassFolderAdapter):
    """Option ``link_patients: {metadata: PATH, source: NAME}``: the Covid-19 folder re-publishes
    images of the Cohen collection under their original file names, often re-cropped (so pixel
    hashes miss them). An image whose file name is in that Cohen ``metadata.csv`` gets the patient
    key ``NAME:<patientid>``, the key the Cohen source gives the original, and the patient split
    keeps copy and original in one split. PATH is relative to the working directory.

    Option ``nih_metadata: PATH``: NIH ChestX-ray14's ``Data_Entry_2017*.csv`` (gzipped or not). The
    No_findings and Pneumonia folders re-publish NIH images under their NIH names; an image whose name is
    in that file gets NIH's cross-archive key ``nih:<Patient ID>``, the key the ``nih`` (and ``rsna``, with
    its NIH map) adapters give the same person, so NIH images arriving through several collections are
    one patient. Only this source's NIH-named files are looked up (state of this source's size)."""
    kind = "darkcovidnet"
    default_options = {"subdir": "X-Ray Image DataSet", "link_patients": None, "nih_metadata": None}
    _links: dict[str, str] | None = None
    _nih: dict[str, str] | None = None

    def nih_patients(self) -> dict[str, str]:
        """NIH image name -> NIH Patient ID for this source's NIH-named files (empty without nih_metadata)."""
        if self._nih is None:
            self._nih = {}
            if self.options.get("nih_metadata"):
                from cxrspark.sources.nih import nih_patient_ids

                names = {p.name for cls in self.class_folders() for p in self.images(cls) if _NIH_NAME.match(p.name)}
                try:
                    self._nih = nih_patient_ids(self.options["nih_metadata"], names)
                except SourceError as exc:
                    raise SourceError(f"source {self.name!r}: {exc}") from exc
        return self._nih

    def links(self) -> dict[str, str]:
        """File name -> linked patient key, from the configured metadata (empty without one)."""
        if self._links is None:
            spec = self.options.get("link_patients") or {}
            self._links = {}
            if spec:
                if not isinstance(spec, dict) or not {"metadata", "source"} <= set(spec):
                    raise SourceError(f"source {self.name!r}: link_patients needs {{metadata: PATH, source: NAME}}")
                path = Path(spec["metadata"])
                if not path.is_file():
                    raise SourceError(f"source {self.name!r}: link_patients metadata {path} does not exist")
                with path.open(newline="", encoding="utf-8", errors="replace") as f:
                    for row in csv.DictReader(f):
                        name, pid = (row.get("filename") or "").strip(), (row.get("patientid") or "").strip()
                        if name and pid:
                            self._links.setdefault(Path(name).name, f"{spec['source']}:{pid}")
        return self._links

    def class_folders(self) -> list[ClassFolder]:
        base = self.root / self.options["subdir"] if self.options["subdir"] else self.root
        if not base.is_dir():
            raise SourceError(f"source {self.name!r}: class folder parent {base} does not exist")
        folders = [ClassFolder(p, p.name) for p in _subdirs(base)]
        if not folders:
            raise SourceError(f"source {self.name!r}: no class folders under {base}")
        return folders

    def describe(self, image: Path, cls: ClassFolder) -> tuple[str, str, dict[str, Any]]:
        m = _NIH_NAME.match(image.name)
        if m:  # NIH ChestX-ray8: <8-digit patient id>_<3-digit follow-up number>.png
            extra: dict[str, Any] = {"nih_followup": m.group(2)}
            if self.options.get("nih_metadata"):
                from cxrspark.sources.nih import nih_key

                nih_pid = self.nih_patients().get(image.name)
                if nih_pid is None:
                    extra["identity_rule"] = "unlinked: image name not in the NIH metadata"
                else:
                    extra.update(linked_patient_key=nih_key(nih_pid), darkcovidnet_patient_id=m.group(1),
                                 identity_rule="nih_metadata: image name in the NIH metadata, its Patient ID")
            return m.group(1), cls.finding, extra
        linked = self.links().get(image.name)
        return image.stem, cls.finding, ({"linked_patient_key": linked} if linked else {})


# ---- Kermany / Mooney -----------------------------------------------------------------------------
_KERMANY_CLASSES = ("NORMAL", "PNEUMONIA")
_PERSON = re.compile(r"person(\d+)_(bacteria|virus)_\d+", re.IGNORECASE)
_NORMAL_IM = re.compile(r"^(NORMAL2-)?IM-(\d+)-", re.IGNORECASE)


@register
class KermanyAdapter(ClassFolderAdapter):
    kind = "kermany"
    default_options: ClassVar[dict[str, Any]] = {}
    license = "CC BY 4.0"

    def class_folders(self) -> list[ClassFolder]:
        found: list[ClassFolder] = []
        for dirpath, dirnames, _ in os.walk(self.root):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith((".", "__MACOSX")))
            here = Path(dirpath)
            for d in list(dirnames):
                if d.upper() in _KERMANY_CLASSES:
                    split = here.name if here != self.root else ""
                    found.append(ClassFolder(here / d, d.upper(), {"split": split}))
                    dirnames.remove(d)  # a class folder is not searched for further class folders
        if not found:
            raise SourceError(f"source {self.name!r}: no NORMAL or PNEUMONIA folder under {self.root}")
        return found

    def describe(self, image: Path, cls: ClassFolder) -> tuple[str, str, dict[str, Any]]:
        person = _PERSON.search(image.stem)
        if person:
            pathogen = person.group(2).lower()
            finding = f"{cls.finding}/{pathogen}" if cls.finding == "PNEUMONIA" else cls.finding
            return f"person{person.group(1)}", finding, {"pathogen": pathogen}
        normal = _NORMAL_IM.match(image.stem)
        if normal:
            prefix = "NORMAL2-" if normal.group(1) else ""
            return f"{prefix}IM-{normal.group(2)}", cls.finding, {}
        return image.stem, cls.finding, {}


# ---- COVID-19 Radiography Database ----------------------------------------------------------------
@register
class CovidRadiographyAdapter(ClassFolderAdapter):
    kind = "covid_radiography"
    default_options = {"classes": ["COVID", "Normal", "Viral Pneumonia", "Lung_Opacity"], "metadata": True}

    def class_folders(self) -> list[ClassFolder]:
        wanted = {str(c).lower() for c in self.options["classes"]}
        found: list[ClassFolder] = []
        top = _subdirs(self.root)
        for base in [self.root] + [d for d in top if d.name.lower() not in wanted]:
            for d in _subdirs(base):
                if d.name.lower() in wanted:
                    meta = self._metadata(base, d.name) if self.options["metadata"] else {}
                    found.append(ClassFolder(d, d.name, metadata=meta))
        if not found:
            raise SourceError(f"source {self.name!r}: no class folder ({', '.join(self.options['classes'])}) "
                              f"under {self.root} or one subfolder")
        return found

    def images(self, cls: ClassFolder) -> list[Path]:
        return [p for p in self.list_images(cls.folder)
                if "masks" not in (part.lower() for part in p.relative_to(cls.folder).parts[:-1])]

    def describe(self, image: Path, cls: ClassFolder) -> tuple[str, str, dict[str, Any]]:
        meta = cls.metadata
        extra: dict[str, Any] = {}
        if meta.get("file"):
            extra["metadata"] = meta["file"]
        if meta.get("error"):
            extra["metadata_error"] = meta["error"]
        entry = meta.get("rows", {}).get(image.stem.lower()) or meta.get("rows", {}).get(image.name.lower())
        if entry:
            extra.update(entry)
        return image.stem, cls.finding, extra

    def _metadata(self, base: Path, class_name: str) -> dict[str, Any]:
        """{'file', 'rows': {file name lower-cased: {'url', 'format', 'size'}}, 'error'} for one class."""
        for ext in (".metadata.xlsx", ".metadata.csv"):
            path = base / f"{class_name}{ext}"
            if path.is_file():
                break
        else:
            return {}
        rel = path.relative_to(self.root).as_posix()
        try:
            table = _read_xlsx(path) if ext.endswith("xlsx") else _read_csv(path)
        except Exception as exc:  # an unreadable optional metadata file must not lose the images
            return {"file": rel, "error": f"{type(exc).__name__}: {exc}"}
        rows: dict[str, dict[str, str]] = {}
        for row in table:
            norm = {str(k).strip().upper(): ("" if v is None else str(v).strip()) for k, v in row.items() if k}
            name = norm.get("FILE NAME", "")
            if not name:
                continue
            entry = {key: norm[col] for col, key in (("URL", "url"), ("FORMAT", "format"), ("SIZE", "size"))
                     if norm.get(col)}
            rows.setdefault(name.lower(), entry)
        return {"file": rel, "rows": rows}


def _read_xlsx(path: Path) -> list[dict[str, Any]]:
    import openpyxl

    wb = openpyxl.load_workbook(path, read_only=True, data_only=True)
    try:
        it = wb.worksheets[0].iter_rows(values_only=True)
        header = next(it, None) or ()
        return [dict(zip(header, values)) for values in it]
    finally:
        wb.close()


def _read_csv(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8-sig", newline="") as fh:
        return list(csv.DictReader(fh))
