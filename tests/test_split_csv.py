"""split_csv adapter (a published train/test split as a CSV): a generated CSV with every option and trap,
read by both readers (comma: SourceAdapter.read_csv; tab, semicolon, space: the module's own), and one
generated image tree ingested end to end (slow)."""
from __future__ import annotations

import dataclasses
import gzip
import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxrspark.labels import COVID, NORMAL, PNEUMONIA, normalise_finding
from cxrspark.schema import SourceRecord
from cxrspark.sources import SourceError, make_adapter

HEADER = ("image", "pid", "set", "finding", "origin", "projection", "note")
COLUMNS = {"file": "image", "patient": "pid", "split": "set", "label": "finding", "source": "origin",
           "view": "projection"}
BY_SOURCE = {"cohen": "cohen", "RSNA": "rsna", "nih": "nih"}
# one row per entry; "FEW_FIELDS" is a row with 3 fields. Quoted cells hold the delimiter or a line break.
ROWS = [
    ("covid/p1/a.png", "1", "train", "COVID-19", "cohen", "PA", ""),  # line 2
    ("covid/b{d}1.png", "2", " test ", "normal", "rsna", "AP", "delimiter in the name"),  # line 3
    ("covid/p1/a.png", "1", "test", "COVID-19", "cohen", "PA", "same file, other split"),  # line 4
    ("c.png", "3", "", "pneumonia", "cohen", "PA", ""),  # line 5: empty split
    ("../../etc/x.png", "4", "train", "normal", "cohen", "PA", ""),  # line 6: leads out of the root
    "FEW_FIELDS",  # line 7
    ("d.png", "5", "train", "", "sirm", "PA", "two\nlines"),  # line 8-9: empty label, unlisted source
    ("e.png", "42", "val", "Pneumonia", "NIH", "L", ""),  # line 10: case-folded source, lateral
    ("f.png", "", "train", "Effusion", "cohen", "PA", ""),  # line 11: empty patient, unusable label
    ("missing.png", "6", "test", "normal", "cohen", "", ""),  # line 12: file never written
    ("", "8", "test", "normal", "cohen", "PA", ""),  # line 13: no file name
]
LINES = [2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13]
PRESENT = ["covid/p1/a.png", "covid/b{d}1.png", "c.png", "d.png", "e.png", "f.png"]


def plain(rec) -> dict:
    row = dataclasses.asdict(rec) if isinstance(rec, SourceRecord) else dict(rec)
    if isinstance(row["provenance"], str):
        row["provenance"] = json.loads(row["provenance"] or "{}")
    return row


def cell(value: str, d: str) -> str:
    return f'"{value}"' if (d in value or "\n" in value or '"' in value) else value


def csv_text(d: str, rows=ROWS, header=HEADER) -> str:
    lines = [d.join(header)]
    for row in rows:
        if row == "FEW_FIELDS":
            lines.append(d.join(("g.png", "7", "train")))
        else:
            lines.append(d.join(cell(v.replace("{d}", d), d) for v in row))
    return "\n".join(lines) + "\n"


def make_tree(root: Path, d: str, gz: bool) -> str:
    (root / "imgs").mkdir(parents=True)
    name = "split.csv.gz" if gz else "split.csv"
    data = csv_text(d).encode()
    (root / name).write_bytes(gzip.compress(data) if gz else data)
    for i, rel in enumerate(PRESENT):
        path = root / "imgs" / rel.replace("{d}", d)
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("L", (4, 4), 10 * i).save(path, "PNG")
    return name


def expected(root: Path, d: str, metadata: str, namespace: str | None, name: str = "pub") -> list[dict]:
    real = os.path.realpath(root)
    own = namespace or name
    own_rule = f"patient_namespace: {namespace}" if namespace else "source_name"

    def rec(line, rel, finding, label, key, rule, split, origin, view, view_raw, *, error=None, extra=None):
        rel = rel.replace("{d}", d)
        ok_path = error is None or error.startswith("malformed_row")
        return {"record_id": f"{name}:{line}", "source": name, "source_path": f"imgs/{rel}",
                "path": f"{real}/imgs/{rel}" if ok_path else None, "label": label, "finding": finding,
                "patient_key": key, "view": view, "modality": "X-ray", "sex": None, "age": None, "license": None,
                "provenance": {"metadata": metadata, "line": line, "published_split": split, "identity_rule": rule,
                               "published_source": origin, "view_raw": view_raw, **(extra or {})},
                "error": error}

    cohen = "patient_namespace_by_source: cohen -> cohen"
    return [
        rec(2, "covid/p1/a.png", "COVID-19", COVID, "cohen:1", cohen, "train", "cohen", "PA", "PA"),
        rec(3, "covid/b{d}1.png", "normal", NORMAL, "rsna:2", "patient_namespace_by_source: rsna -> rsna", "test",
            "rsna", "AP", "AP", extra={"per_image_id": True}),
        rec(4, "covid/p1/a.png", "COVID-19", COVID, "cohen:1", cohen, "test", "cohen", "PA", "PA"),
        rec(5, "c.png", "pneumonia", PNEUMONIA, "cohen:3", cohen, "", "cohen", "PA", "PA",
            error="malformed_row: line 5 has an empty split"),
        rec(6, "../../etc/x.png", "normal", NORMAL, "cohen:4", cohen, "train", "cohen", "PA", "PA",
            error=f"path_outside_root: 'imgs/../../etc/x.png' resolves outside {root.resolve()}"),
        {"record_id": f"{name}:L7", "source": name, "source_path": "", "path": None, "label": None, "finding": "",
         "patient_key": f"{name}:unknown-L7", "view": "unknown", "modality": "X-ray", "sex": None, "age": None,
         "license": None, "provenance": {"metadata": metadata, "line": 7},
         "error": "malformed_row: line 7 has 3 fields, header has 7"},
        rec(8, "d.png", "", None, f"{own}:5", own_rule, "train", "sirm", "PA", "PA"),
        rec(10, "e.png", "Pneumonia", PNEUMONIA, "nih:00000042", "patient_namespace_by_source: NIH -> nih", "val",
            "NIH", "Lateral", "L", extra={"patient_id": "42"}),
        rec(11, "f.png", "Effusion", None, "cohen:unknown-L11", cohen, "train", "cohen", "PA", "PA"),
        rec(12, "missing.png", "normal", NORMAL, "cohen:6", cohen, "test", "cohen", "unknown", "",
            error="missing_file: imgs/missing.png"),
        {**rec(13, "", "normal", NORMAL, "cohen:8", cohen, "test", "cohen", "PA", "PA",
               error="missing_file: empty file name"), "source_path": ""},
    ]


@pytest.mark.parametrize("namespace", [None, "figure1"], ids=["own_namespace", "patient_namespace"])
@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gz"])
@pytest.mark.parametrize("delimiter", [",", "\t", ";"], ids=["comma", "tab", "semicolon"])
def test_generated_csv_gives_exact_records(tmp_path, delimiter, gz, namespace):
    root = tmp_path / "published"
    metadata = make_tree(root, delimiter, gz)
    options = {"file": metadata, "columns": COLUMNS, "image_dir": "imgs", "patient_namespace": namespace,
               "patient_namespace_by_source": BY_SOURCE, "delimiter": delimiter}
    adapter = make_adapter("split_csv", "pub", root, options)
    rows = [plain(r) for r in adapter.checked_records()]
    assert rows == expected(root, delimiter, metadata, namespace)
    assert [r["provenance"]["line"] for r in rows] == LINES
    assert all(r["label"] == normalise_finding(r["finding"]) for r in rows)
    # ids are unique although covid/p1/a.png is listed in two splits (the leak the audit reports)
    assert len({r["record_id"] for r in rows}) == len(rows)
    listed = Counter(r["source_path"] for r in rows)
    assert listed["imgs/covid/p1/a.png"] == 2


def test_defaults_and_space_delimiter(tmp_path):
    """Default column names, no image_dir, the source's own namespace; a space-separated copy (runs of
    spaces and trailing spaces) gives the same records."""
    root = tmp_path / "r"
    (root / "sub").mkdir(parents=True)
    (root / "split.csv").write_text('file,patient,split,label\nsub/a.png,p1,train,COVID-19\n'
                                    '"sub/b c.png",p2,test,normal\n')
    (root / "split.txt").write_text('file patient  split label \nsub/a.png  p1 train COVID-19  \n'
                                    '"sub/b c.png" p2 test normal\n')
    out = {}
    for name, delimiter in (("split.csv", ","), ("split.txt", "space")):
        recs = list(make_adapter("split_csv", "pub", root, {"file": name, "delimiter": delimiter}).records())
        out[name] = [(r.record_id, r.source_path, r.path, r.patient_key, r.label, r.view, r.error,
                      {k: v for k, v in r.provenance.items() if k != "metadata"}) for r in recs]
    assert out["split.csv"] == out["split.txt"] == [
        ("pub:2", "sub/a.png", f"{root.resolve()}/sub/a.png", "pub:p1", COVID, "unknown", None,
         {"line": 2, "published_split": "train", "identity_rule": "source_name"}),
        ("pub:3", "sub/b c.png", f"{root.resolve()}/sub/b c.png", "pub:p2", NORMAL, "unknown", None,
         {"line": 3, "published_split": "test", "identity_rule": "source_name"}),
    ]


@pytest.mark.parametrize("delimiter", [",", "\t"], ids=["comma", "tab"])
def test_missing_column_every_row_quarantined(tmp_path, delimiter):
    root = tmp_path / "r"
    root.mkdir()
    (root / "s.csv").write_text(delimiter.join(("file", "patient", "label")) + "\n"
                                + delimiter.join(("a.png", "1", "normal")) + "\n"
                                + delimiter.join(("b.png", "2", "normal")) + "\n")
    recs = list(make_adapter("split_csv", "pub", root, {"file": "s.csv", "delimiter": delimiter}).records())
    error = "missing_column: s.csv has no column(s) ['split']"
    assert [(r.record_id, r.error) for r in recs] == [("pub:L2", error), ("pub:L3", error)]
    # a mapped optional role whose column is absent (a typo in the config) is missing too; null drops the role
    (root / "s.csv").write_text("file,patient,split\na.png,1,train\n")
    recs = list(make_adapter("split_csv", "pub", root, {"file": "s.csv"}).records())
    assert [r.error for r in recs] == ["missing_column: s.csv has no column(s) ['label']"]
    recs = list(make_adapter("split_csv", "pub", root, {"file": "s.csv", "columns": {"label": None}}).records())
    assert [(r.error, r.finding, r.label, r.provenance["published_split"]) for r in recs] == [(None, "", None,
                                                                                              "train")]


@pytest.mark.parametrize("delimiter", [",", ";"], ids=["comma", "semicolon"])
def test_bad_encoding_and_unterminated_quote(tmp_path, delimiter):
    """Both readers give the same reasons for undecodable bytes and a quote left open at the end."""
    root = tmp_path / "r"
    root.mkdir()
    d = delimiter.encode()
    (root / "s.csv").write_bytes(d.join((b"file", b"patient", b"split", b"label")) + b"\n"
                                 + d.join((b"a.png", b"1", b"train", b"normal")) + b"\n"
                                 + d.join((b"b\xff.png", b"2", b"train", b"normal")) + b"\n"
                                 + d.join((b"c.png", b"3", b"test", b"normal")) + b"\n"
                                 + d.join((b'"d.png', b"4", b"test", b"normal")) + b"\nmore\n")
    recs = list(make_adapter("split_csv", "pub", root, {"file": "s.csv", "delimiter": delimiter}).records())
    assert [r.record_id for r in recs] == ["pub:2", "pub:L3", "pub:4", "pub:L5"]
    assert recs[1].error.startswith("bad_encoding: line 3 is not valid utf-8")
    assert recs[3].error == "malformed_row: unterminated quote from line 5"
    assert recs[0].error is None and recs[2].error is None


def test_options_are_checked(tmp_path):
    root = tmp_path / "r"
    root.mkdir()
    bad = [
        ({"file": "s.csv", "columns": {"patient_id": "x"}}, "columns must map roles"),
        ({"file": "s.csv", "columns": {"split": None}}, "need a column"),
        ({"file": "s.csv", "columns": {"view": 3}}, "must be a name or null"),
        ({"file": "s.csv", "patient_namespace_by_source": {"rsna": "rsna"}}, "needs the 'source' role"),
        ({"file": "s.csv", "columns": {"source": "src"}, "patient_namespace_by_source": {"rsna": ""}},
         "must map source values"),
        ({"file": "s.csv", "patient_namespace": ""}, "patient_namespace must be"),
        ({"file": "s.csv", "delimiter": "::"}, "delimiter must be one character"),
        ({"file": "s.csv", "label": "x"}, "unknown option"),
    ]
    for options, message in bad:
        with pytest.raises(ValueError, match=message):
            make_adapter("split_csv", "pub", root, options)
    with pytest.raises(SourceError, match="option 'file'"):
        list(make_adapter("split_csv", "pub", root, {}).records())
    with pytest.raises(SourceError, match="does not exist"):
        list(make_adapter("split_csv", "pub", root, {"file": "s.csv"}).records())
    with pytest.raises(SourceError, match="does not exist"):
        list(make_adapter("split_csv", "pub", root, {"file": "s.csv", "delimiter": "tab"}).records())
    for options in ({"file": "s.csv"}, {}):  # a missing root is reported first, as for every kind
        with pytest.raises(SourceError, match="root folder"):
            list(make_adapter("split_csv", "pub", tmp_path / "absent", options).records())


def test_keys_match_the_cohen_adapter(tmp_path):
    """A published split over the Cohen collection names its patients with the cohen adapter's keys."""
    cohen = tmp_path / "cohen"
    (cohen / "images").mkdir(parents=True)
    (cohen / "metadata.csv").write_text("patientid,finding,view,modality,filename,folder\n"
                                        "97,COVID-19,PA,X-ray,a.png,images\n")
    Image.new("L", (4, 4), 1).save(cohen / "images" / "a.png")
    (cohen / "split.csv").write_text("file,patient,split,label\nimages/a.png,97,test,COVID-19\n")
    theirs = {r.patient_key for r in make_adapter("cohen", "cohen", cohen).records()}
    ours = {r.patient_key for r in make_adapter("split_csv", "covidnet_split", cohen,
                                                {"file": "split.csv", "patient_namespace": "cohen"}).records()}
    assert theirs == ours == {"cohen:97"}


# ---- end to end --------------------------------------------------------------------------------------------
def _image(rng: np.random.Generator, size: int = 96) -> Image.Image:
    """Smooth random structure: every image distinct, with keypoints of its own."""
    small = rng.random((12, 12))
    big = np.asarray(Image.fromarray((small * 255).astype(np.uint8)).resize((size, size), Image.BICUBIC), float)
    big += rng.normal(0, 12, big.shape)
    return Image.fromarray(np.clip(big, 0, 255).astype(np.uint8))


@pytest.mark.slow
def test_end_to_end_ingest(spark, tmp_path):
    import pandas as pd

    from conftest import _ingest

    root = tmp_path / "published"
    rng = np.random.default_rng(5)
    labels = ("COVID-19", "normal", "pneumonia")
    rows = []  # (file, patient, split, label, source, view)
    for p in range(10):  # 10 patients x 3 images: 7 patients published in train, 3 in test
        for k in range(3):
            rows.append((f"{labels[p % 3]}/p{p}/{k}.png", str(p), "train" if p < 7 else "test", labels[p % 3],
                         "cohen" if p % 2 else "rsna", "PA"))
    rows += [
        ("COVID-19/p0/0.png", "0", "test", "COVID-19", "rsna", "PA"),  # the same image in the other split
        ("x/empty_split.png", "20", "", "normal", "cohen", "PA"),  # quarantined: malformed_row
        ("x/absent.png", "21", "train", "normal", "cohen", "PA"),  # quarantined: missing_file
        ("../../outside.png", "22", "train", "normal", "cohen", "PA"),  # quarantined: path_outside_root
        ("x/no_label.png", "23", "train", "", "cohen", "PA"),  # filtered: unusable_label
        ("x/lateral.png", "24", "test", "normal", "cohen", "LL"),  # filtered: lateral_view
    ]
    lines = ["path,subject,fold,class,dataset,view"] + [",".join(r) for r in rows] + ["x/few.png,25"]
    (root / "data").mkdir(parents=True)
    (root / "published_split.csv").write_text("\n".join(lines) + "\n")
    for rel, *_ in rows:
        path = root / "data" / rel
        if rel in ("x/absent.png", "../../outside.png") or path.exists():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        _image(rng).save(path)
    (tmp_path / "outside.png").write_bytes((root / "data" / rows[0][0]).read_bytes())

    options = {"file": "published_split.csv", "image_dir": "data",
               "columns": {"file": "path", "patient": "subject", "split": "fold", "label": "class",
                           "source": "dataset", "view": "view"},
               "patient_namespace_by_source": {"cohen": "cohen", "rsna": "rsna"}}
    out = _ingest(spark, [{"name": "pubsplit", "kind": "split_csv", "root": str(root), "options": options}],
                  tmp_path / "out", tmp_path, "ingest.image_size=64")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["input_rows"] == len(rows) + 1
    assert summary["reconciliation"].endswith("(exact)")
    assert summary["counts"] == {"curated": 30, "filtered": 2, "duplicate": 1, "quarantined": 4}
    assert summary["reasons"] == {"duplicate/exact": 1, "filtered/lateral_view": 1, "filtered/unusable_label": 1,
                                  "quarantined/malformed_row": 2, "quarantined/missing_file": 1,
                                  "quarantined/path_outside_root": 1}
    quarantine = pd.read_parquet(out / "quarantine")
    assert sorted(quarantine["reason"]) == [
        "malformed_row: line 33 has an empty split", "malformed_row: line 38 has 2 fields, header has 6",
        "missing_file: data/x/absent.png",
        f"path_outside_root: 'data/../../outside.png' resolves outside {root.resolve()}"]
    filtered = pd.read_parquet(out / "filtered")
    assert sorted(filtered["reason"]) == ["lateral_view: Lateral", "unusable_label: finding ''"]

    cur = pd.concat([pd.read_parquet(out / "curated" / s) for s in summary["splits"]])
    assert len(cur) == 30 and set(cur["source"]) == {"pubsplit"}
    assert Counter(cur["label"]) == {COVID: 12, NORMAL: 9, PNEUMONIA: 9}
    assert (cur.groupby("patient_key")["split"].nunique() == 1).all()
    assert set(cur["patient_key"]) == {f"{'cohen' if p % 2 else 'rsna'}:{p}" for p in range(10)}
    # the published split survives into the curated provenance, row by row
    published = {f"pubsplit:{i + 2}": r[2] for i, r in enumerate(rows)}
    provenance = [json.loads(p) for p in cur["provenance"]]
    assert all(p["published_split"] == published[rid] for p, rid in zip(provenance, cur["record_id"]))
    assert sorted(Counter(p["published_split"] for p in provenance).values()) in ([9, 21], [10, 20])
    assert all(p["identity_rule"].startswith("patient_namespace_by_source: ") for p in provenance)
    assert all(p.get("per_image_id", False) == k.startswith("rsna:") for p, k in zip(provenance, cur["patient_key"]))
    assert summary["identity"]["pubsplit"]["images_split_as_own_patients"] == 15  # the 5 rsna patients' images
    # the image listed twice: one copy curated, the other a duplicate of it, both keep their published split
    dups = pd.read_parquet(out / "duplicates")
    assert len(dups) == 1
    pair = {dups["record_id"].iloc[0], dups["duplicate_of"].iloc[0]}
    assert pair == {"pubsplit:2", f"pubsplit:{len(rows) - 6 + 2}"}
    assert {published[r] for r in pair} == {"train", "test"}
