"""Source adapters: the real snapshot (skipped when absent) and small generated layouts (no Spark)."""
from __future__ import annotations

import os
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from cxrspark.labels import COVID, NORMAL, PNEUMONIA
from cxrspark.sample import dicom_bytes, encode, synthetic_cxr, xlsx_bytes
from cxrspark.schema import SourceRecord
from cxrspark.sources import SourceAdapter, SourceError, adapter_kinds, make_adapter

ALL_KINDS = ["actualmed", "bimcv", "chexpert", "cohen", "covid_radiography", "covidx", "darkcovidnet", "figure1",
             "kermany", "mhh", "mimic", "nih", "padchest", "ricord", "rsna", "split_csv", "vindr"]


def read(kind: str, root: Path, name: str | None = None, **options) -> list[SourceRecord]:
    return list(make_adapter(kind, name or kind, root, options).checked_records())


def check_contract(records: list[SourceRecord], adapter: SourceAdapter | None = None) -> None:
    """Invariants every adapter must keep, whatever the input."""
    ids = [r.record_id for r in records]
    assert len(ids) == len(set(ids)), "record ids must be unique"
    for r in records:
        assert isinstance(r, SourceRecord)
        assert r.record_id.startswith(f"{r.source}:")
        # a source's own namespace, or another source's key for a re-published image (recorded)
        assert r.patient_key.startswith(f"{r.source}:") or r.patient_key == r.provenance.get("linked_patient_key")
        if r.error is None:
            assert r.path is not None and Path(r.path).is_file() and Path(r.path).is_absolute()
        else:
            assert r.path is None
            assert re.match(r"^[a-z_]+: ", r.error), r.error
        assert isinstance(r.provenance, dict)
        r.to_row()  # serialisable


def picture(seed: int, cls: str = NORMAL, size: tuple[int, int] = (64, 64)) -> np.ndarray:
    return synthetic_cxr(np.random.default_rng(seed), cls, *size)


def write(path: Path, data: bytes | str, encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode(encoding) if isinstance(data, str) else data)
    return path


# ---- registry and contract -----------------------------------------------------------------------------
def test_every_kind_is_registered():
    assert adapter_kinds() == ALL_KINDS


def test_unknown_option_is_a_value_error(tmp_path):
    with pytest.raises(ValueError, match="unknown option"):
        make_adapter("cohen", "c", tmp_path, {"no_such_option": 1})
    with pytest.raises(KeyError):
        make_adapter("no_such_kind", "x", tmp_path)


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_missing_root_is_a_source_error(tmp_path, kind):
    with pytest.raises(SourceError):
        read(kind, tmp_path / "absent")


@pytest.mark.parametrize("kind", ["cohen", "figure1", "actualmed", "mhh", "rsna", "darkcovidnet", "kermany",
                                  "covid_radiography"])
def test_empty_root_is_a_source_error(tmp_path, kind):
    # no metadata file (metadata sources) / no class folder (folder sources)
    with pytest.raises(SourceError):
        read(kind, tmp_path)


# ---- cohen: generated edge cases -------------------------------------------------------------------------
COHEN_COLS = ["patientid", "offset", "sex", "age", "finding", "view", "modality", "folder", "filename", "doi",
              "url", "license", "clinical_notes"]


def cohen_line(*cells: str) -> str:
    assert len(cells) == len(COHEN_COLS)
    return ",".join(cells) + "\n"


@pytest.fixture
def cohen_tree(tmp_path: Path) -> Path:
    root = tmp_path / "cohen"
    for name in ("a.jpg", "b.png", "c.jpg", "e.png"):
        write(root / "images" / name, encode(picture(len(name)), "png-L"))
    write(root / "scans" / "d.jpg", encode(picture(7), "jpeg-L"))
    write(tmp_path / "secret.txt", "not for the pipeline")
    lines = [",".join(COHEN_COLS) + "\n",
             cohen_line("1", "0", "M", "65", "COVID-19", "PA", "X-ray", "images", "a.jpg", "10.1/x", "http://u/1",
                        " CC BY 4.0 ", '"Notes, with a comma"'),
             cohen_line("1", "3", "M", "65", "COVID-19", "AP Supine", "X-ray", "images", "a.jpg", "", "", "", ""),
             cohen_line("2", "", "F", "67+", "Pneumonia/Bacterial/Streptococcus", "L", "X-ray", "images", "b.png",
                        "", "", " ", ""),
             cohen_line("3", "", "", "", "COVID-19", "Axial", "CT", "images", "c.jpg", "", "", "", ""),
             cohen_line("4", "", "", "", "todo", "PA", "X-ray", "images", "../../secret.txt", "", "", "", ""),
             cohen_line("5", "", "", "", "COVID-19", "PA", "X-ray", "images", "/etc/passwd", "", "", "", ""),
             cohen_line("6", "", "", "", "COVID-19", "PA", "X-ray", "images", "nothere.jpg", "", "", "", ""),
             "7,0,M,50,COVID-19,PA\n",  # malformed: 6 fields
             ]
    body = "".join(lines).encode("utf-8")
    body += cohen_line("8", "", "", "", "COVID-19", "PA", "X-ray", "images", "e.png", "", "", "",
                       "caf@").encode("utf-8").replace(b"@", b"\xe9")  # Latin-1 byte in a UTF-8 file
    body += cohen_line("9", "", "F", "", "No Finding", "AP", "X-ray", "scans", "d.jpg", "", "", "", "").encode()
    body += cohen_line("10", "", "", "", "SARS", "PA", "X-ray", "", "e.png", "", "", "", "").encode()
    write(root / "metadata.csv", body)
    return root


def test_cohen_rows_errors_and_vocabulary(cohen_tree):
    recs = read("cohen", cohen_tree, "c")
    check_contract(recs)
    by_line = {int(r.record_id.split(":L")[1]): r for r in recs}
    assert sorted(by_line) == list(range(2, 13)), "one record per data line, malformed ones included"
    r = by_line[2]
    assert (r.label, r.view, r.modality, r.sex, r.age, r.patient_key) == (COVID, "PA", "X-ray", "M", 65, "c:1")
    assert r.source_path == "images/a.jpg" and r.path == str((cohen_tree / "images/a.jpg").resolve())
    assert r.license == "CC BY 4.0"
    assert r.provenance["doi"] == "10.1/x" and r.provenance["url"] == "http://u/1"
    assert r.provenance["clinical_notes"] == "Notes, with a comma" and r.provenance["line"] == 2
    # the same file referenced by two rows: two records, same path, different ids
    assert by_line[3].path == r.path and by_line[3].view == "AP Supine" and by_line[3].provenance["offset"] == "3"
    r = by_line[4]
    assert (r.view, r.label, r.age, r.license) == ("Lateral", PNEUMONIA, 67, None)
    assert r.finding == "Pneumonia/Bacterial/Streptococcus"
    assert (by_line[5].modality, by_line[5].view) == ("CT", "Axial")
    assert by_line[6].error.startswith("path_outside_root:") and by_line[6].label is None
    assert by_line[6].finding == "todo" and by_line[6].patient_key == "c:4"
    assert by_line[7].error.startswith("path_outside_root:")
    assert by_line[8].error.startswith("missing_file:") and by_line[8].label == COVID
    assert by_line[8].source_path == "images/nothere.jpg"
    assert by_line[9].error.startswith("malformed_row:")
    assert by_line[10].error.startswith("bad_encoding:")
    # rows after the broken ones are still read
    assert by_line[11].error is None and by_line[11].source_path == "scans/d.jpg" and by_line[11].label == NORMAL
    assert by_line[12].error is None and by_line[12].source_path == "images/e.png" and by_line[12].label == PNEUMONIA
    assert by_line[11].sex == "F"


def test_cohen_is_stable_and_checks_metadata(cohen_tree):
    assert read("cohen", cohen_tree) == read("cohen", cohen_tree)
    with pytest.raises(SourceError):
        read("cohen", cohen_tree, metadata="other.csv")


def test_symlink_out_of_the_root_is_refused(tmp_path):
    outside = write(tmp_path / "outside.png", encode(picture(1), "png-L"))
    folder = tmp_path / "dk" / "X-Ray Image DataSet" / "Covid-19"
    write(folder / "inside.png", encode(picture(2), "png-L"))
    (folder / "link.png").symlink_to(outside)
    recs = {Path(r.source_path).name: r for r in read("darkcovidnet", tmp_path / "dk")}
    assert recs["inside.png"].error is None
    assert recs["link.png"].error.startswith("path_outside_root:") and recs["link.png"].path is None


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_symlinks_in_a_class_folder_never_vanish(tmp_path):
    pipe = tmp_path / "outside" / "pipe.png"
    pipe.parent.mkdir()
    os.mkfifo(pipe)
    folder = tmp_path / "k" / "train" / "NORMAL"
    write(folder / "IM-0001-0001.jpeg", encode(picture(1), "jpeg-L"))
    (folder / "IM-0002-0001.jpeg").symlink_to(pipe)  # not a regular file, outside the root
    (folder / "IM-0003-0001.jpeg").symlink_to(folder / "gone.jpeg")  # dangling
    recs = read("kermany", tmp_path / "k")
    check_contract(recs)
    assert {Path(r.source_path).name: r.error and r.error.split(":")[0] for r in recs} == {
        "IM-0001-0001.jpeg": None, "IM-0002-0001.jpeg": "path_outside_root", "IM-0003-0001.jpeg": "missing_file"}


@pytest.mark.parametrize("kind, metadata, header, missing", [
    ("cohen", "metadata.csv", "patientid,view,modality,folder,filename", ["finding"]),
    ("figure1", "metadata.csv", "offset,finding,view", ["patientid"]),
    ("actualmed", "metadata.csv", "patientid,finding,view", ["imagename"]),
    ("mhh", "data.csv", "patient_id,sex,projection", ["image_id"]),
    ("rsna", "stage_2_train_labels.csv", "patientId,x,y,width,height", ["Target"]),
])
def test_a_missing_required_column_quarantines_every_row(tmp_path, kind, metadata, header, missing):
    n = len(header.split(","))
    write(tmp_path / metadata, header + "\n" + ",".join(["1"] * n) + "\n" + ",".join(["2"] * n) + "\n")
    recs = read(kind, tmp_path)
    check_contract(recs)
    assert [r.error for r in recs] == [f"missing_column: {metadata} has no column(s) {missing}"] * 2
    assert [r.record_id for r in recs] == [f"{kind}:L2", f"{kind}:L3"]


# ---- figure1 / actualmed -----------------------------------------------------------------------------------
def test_figure1_latin1_letter_suffix_and_extension_lookup(tmp_path):
    root = tmp_path / "f1"
    write(root / "images" / "COVID-00039a.jpg", encode(picture(1), "jpeg-L"))
    write(root / "images" / "COVID-00039b.png", encode(picture(2), "png-L"))
    write(root / "images" / "COVID-00040.jpeg", encode(picture(3), "jpeg-L"))
    header = ("patientid,offset,sex,age,finding,survival,temperature,pO2 saturation,view,modality,"
              "artifacts/distortion,notes\n")
    text = (header
            + "COVID-00039a,10,F,77,COVID-19,,,80,AP erect,X-ray,,Fièvre 38°C\n"
            + "COVID-00039b,10,F,77,COVID-19,,,80,,X-ray,,\n"
            + "COVID-00040,,,,,,,,,X-ray,,primary tuberculosis infection\n"
            + "COVID-00041,,,,Pneumonia,,,,,X-ray,,\n")
    write(root / "metadata.csv", text, "latin-1")
    recs = read("figure1", root)
    check_contract(recs)
    assert [r.source_path for r in recs] == ["images/COVID-00039a.jpg", "images/COVID-00039b.png",
                                             "images/COVID-00040.jpeg", "images/COVID-00041.jpg"]
    assert [r.patient_key for r in recs] == ["figure1:COVID-00039", "figure1:COVID-00039", "figure1:COVID-00040",
                                             "figure1:COVID-00041"]
    assert recs[0].provenance["notes"] == "Fièvre 38°C" and recs[0].view == "AP Erect" and recs[0].age == 77
    assert recs[1].view == "unknown"
    assert recs[2].finding == "" and recs[2].label is None and recs[2].error is None
    assert recs[2].provenance["notes"] == "primary tuberculosis infection"
    assert recs[3].error.startswith("missing_file:") and recs[3].label == PNEUMONIA
    # read as UTF-8 instead, the Latin-1 line is a bad_encoding row and the others survive
    recs = read("figure1", root, encoding="utf-8")
    assert [bool(r.error and r.error.startswith("bad_encoding:")) for r in recs] == [True, False, False, False]


def test_actualmed_crlf_imagename(tmp_path):
    root = tmp_path / "am"
    write(root / "images" / "CR.1.png", encode(picture(1), "png-RGB"))
    write(root / "images" / "DX.2.png", encode(picture(2), "png-RGB"))
    header = ("patientid,offset,sex,age,finding,survival,temperature,pO2 saturation,view,modality,imagename,"
              "artifacts/distortion,notes\r\n")
    write(root / "metadata.csv", header
          + 'ANON1,,,,COVID-19,,,,AP,X-ray,CR.1.png,,", date taken (YYYYMMDD): 20200321"\r\n'
          + 'ANON127,,,,,,,,PA,X-ray,DX.2.png,,"Inconclusive, date taken (YYYYMMDD): 20200407"\r\n'
          + 'ANON9,,,,No finding,,,,PA,X-ray,,,\r\n')
    recs = read("actualmed", root)
    check_contract(recs)
    assert [(r.label, r.view, r.patient_key) for r in recs[:2]] == [(COVID, "AP", "actualmed:ANON1"),
                                                                     (None, "PA", "actualmed:ANON127")]
    assert recs[1].finding == "" and recs[1].provenance["notes"].startswith("Inconclusive")
    assert recs[2].error.startswith("missing_file:")


# ---- mhh ------------------------------------------------------------------------------------------------------
def test_mhh_rows(tmp_path):
    root = tmp_path / "mhh"
    write(root / "png" / "aa.png", encode(picture(1), "png-16"))
    write(root / "data.csv", "patient_id,image_id,sex,age,modality,projection\n"
                             "p1,aa,m,54,CR,ap\np1,bb,f,,DX,pa\n")
    recs = read("mhh", root)
    check_contract(recs)
    assert [(r.finding, r.label, r.license, r.modality) for r in recs] == \
        [("COVID-19", COVID, "CC BY 3.0", "X-ray")] * 2
    assert (recs[0].view, recs[0].sex, recs[0].age, recs[0].source_path) == ("AP", "M", 54, "png/aa.png")
    assert recs[1].error.startswith("missing_file:") and recs[1].view == "PA" and recs[1].patient_key == "mhh:p1"


# ---- folder sources -------------------------------------------------------------------------------------------
def test_darkcovidnet_classes_and_nih_ids(tmp_path):
    base = tmp_path / "dk" / "X-Ray Image DataSet"
    files = ["Covid-19/covid-1-PA.jpg", "No_findings/00000001_000.png", "No_findings/00000001_002.png",
             "Pneumonia/00012345_001.png", "Pneumonia/notes.txt"]
    for i, name in enumerate(files):
        write(base / name, encode(picture(i), "png-L"))
    recs = read("darkcovidnet", tmp_path / "dk", "dk")
    check_contract(recs)
    assert [r.source_path for r in recs] == ["X-Ray Image DataSet/" + f for f in files[:4]]
    assert [r.record_id for r in recs][0] == "dk:X-Ray Image DataSet/Covid-19/covid-1-PA.jpg"
    assert [(r.finding, r.label) for r in recs] == [("Covid-19", COVID), ("No_findings", NORMAL),
                                                    ("No_findings", NORMAL), ("Pneumonia", PNEUMONIA)]
    assert [r.patient_key for r in recs] == ["dk:covid-1-PA", "dk:00000001", "dk:00000001", "dk:00012345"]
    assert {r.view for r in recs} == {"unknown"}
    with pytest.raises(SourceError):
        read("darkcovidnet", tmp_path / "dk", subdir="nope")


def test_kermany_layouts_and_ids(tmp_path):
    root = tmp_path / "k"
    files = ["chest_xray/train/NORMAL/IM-0115-0001.jpeg", "chest_xray/train/NORMAL/NORMAL2-IM-0007-0001-0002.jpeg",
             "chest_xray/train/PNEUMONIA/person1000_bacteria_2931.jpeg",
             "chest_xray/train/PNEUMONIA/person1000_virus_1681.jpeg",
             "chest_xray/test/PNEUMONIA/odd-name.jpeg", "chest_xray/val/NORMAL/IM-0001-0001.jpeg",
             "__MACOSX/chest_xray/train/NORMAL/IM-0115-0001.jpeg"]
    for i, name in enumerate(files):
        write(root / name, encode(picture(i), "jpeg-RGB"))
    recs = {r.source_path: r for r in read("kermany", root, "k")}
    check_contract(list(recs.values()))
    assert len(recs) == 6, "__MACOSX copies are not images of the dataset"
    r = recs["chest_xray/train/NORMAL/IM-0115-0001.jpeg"]
    assert (r.patient_key, r.finding, r.label, r.license) == ("k:IM-0115", "NORMAL", NORMAL, "CC BY 4.0")
    assert r.provenance["split"] == "train"
    assert recs["chest_xray/train/NORMAL/NORMAL2-IM-0007-0001-0002.jpeg"].patient_key == "k:NORMAL2-IM-0007"
    b = recs["chest_xray/train/PNEUMONIA/person1000_bacteria_2931.jpeg"]
    v = recs["chest_xray/train/PNEUMONIA/person1000_virus_1681.jpeg"]
    assert b.patient_key == v.patient_key == "k:person1000"
    assert (b.finding, v.finding, b.label, v.label) == ("PNEUMONIA/bacteria", "PNEUMONIA/virus", PNEUMONIA, PNEUMONIA)
    r = recs["chest_xray/test/PNEUMONIA/odd-name.jpeg"]
    assert (r.patient_key, r.finding, r.provenance["split"]) == ("k:odd-name", "PNEUMONIA", "test")
    assert recs["chest_xray/val/NORMAL/IM-0001-0001.jpeg"].provenance["split"] == "val"


@pytest.mark.parametrize("nested", [True, False])
def test_covid_radiography_with_metadata_images_and_masks(tmp_path, nested):
    root = tmp_path / "rad"
    base = root / "COVID-19_Radiography_Dataset" if nested else root
    for i, name in enumerate(["COVID/images/COVID-1.png", "COVID/images/COVID-2.png", "COVID/masks/COVID-1.png",
                              "Normal/Normal-1.png", "Normal/masks/Normal-1.png",
                              "Viral Pneumonia/images/Viral Pneumonia-1.png",
                              "Lung_Opacity/images/Lung_Opacity-1.png"]):
        write(base / name, encode(picture(i), "png-L"))
    header = ["FILE NAME", "FORMAT", "SIZE", "URL"]
    write(base / "COVID.metadata.xlsx", xlsx_bytes([header, ["COVID-1", "PNG", "256*256", "https://a/1"],
                                                   ["COVID-2", "PNG", "256*256", "https://a/2"]]))
    write(base / "Normal.metadata.xlsx", xlsx_bytes([header, ["NORMAL-1", "PNG", "256*256", "https://n/1"]]))
    write(base / "Viral Pneumonia.metadata.csv",
          "FILE NAME,FORMAT,SIZE,URL\nViral Pneumonia-1,PNG,256*256,https://v/1\n")
    write(base / "Lung_Opacity.metadata.xlsx", b"this is not a zip file")
    recs = read("covid_radiography", root, "rad")
    check_contract(recs)
    prefix = "COVID-19_Radiography_Dataset/" if nested else ""
    assert [r.source_path for r in recs] == [prefix + p for p in [
        "COVID/images/COVID-1.png", "COVID/images/COVID-2.png", "Lung_Opacity/images/Lung_Opacity-1.png",
        "Normal/Normal-1.png", "Viral Pneumonia/images/Viral Pneumonia-1.png"]], "masks/ must be ignored"
    assert [r.label for r in recs] == [COVID, COVID, None, NORMAL, PNEUMONIA]
    assert [r.finding for r in recs] == ["COVID", "COVID", "Lung_Opacity", "Normal", "Viral Pneumonia"]
    assert [r.patient_key for r in recs][0] == "rad:COVID-1"
    assert [r.provenance.get("url") for r in recs] == ["https://a/1", "https://a/2", None, "https://n/1",
                                                       "https://v/1"]
    assert recs[0].provenance["metadata"] == prefix + "COVID.metadata.xlsx"
    assert "metadata_error" in recs[2].provenance and recs[2].error is None


# ---- RSNA -------------------------------------------------------------------------------------------------------
def test_rsna_boxes_classes_and_dicom_headers(tmp_path):
    root = tmp_path / "rsna"
    img = root / "stage_2_train_images"
    write(img / "p1.dcm", dicom_bytes(picture(1), "p1", view="PA", sex="F", age="051"))
    write(img / "p2.dcm", dicom_bytes(picture(2), "p2", view="AP", sex="M", age="062Y", monochrome1=True))
    write(img / "p3.dcm", dicom_bytes(picture(3), "p3", view="AP", sex="F", age="030"))
    write(img / "p4.dcm", dicom_bytes(picture(4), "p4", view="PA", sex="M", age="040"))
    write(img / "p5.dcm", b"garbage, not a DICOM file")
    write(img / "p6.dcm", dicom_bytes(picture(6), "p6", view="PA", sex="M", age="044"))
    write(root / "stage_2_train_labels.csv",
          "patientId,x,y,width,height,Target\n"
          "p1,10,20,30,40,1\np1,50,20,30,45,1\np2,,,,,0\np3,,,,,0\np4,,,,,0\np5,1,2,3,4,1\n"
          "p6,,,,,0\np7,,,,,0\np1,60,20,10,10,1\n")
    write(root / "stage_2_detailed_class_info.csv",
          "patientId,class\np1,Lung Opacity\np1,Lung Opacity\np2,Normal\np3,No Lung Opacity / Not Normal\n"
          "p5,Lung Opacity\np6,Lung Opacity\np7,Normal\np1,Lung Opacity\n")
    recs = read("rsna", root)
    check_contract(recs)
    assert [r.patient_key for r in recs] == [f"rsna:p{i}" for i in range(1, 8)], "one record per patientId"
    assert [r.record_id for r in recs] == ["rsna:L2", "rsna:L4", "rsna:L5", "rsna:L6", "rsna:L7", "rsna:L8",
                                           "rsna:L9"]
    p1, p2, p3, p4, p5, p6, p7 = recs
    assert (p1.finding, p1.label, p1.provenance["box_count"]) == ("Lung Opacity", PNEUMONIA, 3)
    assert p1.provenance["boxes"][0] == [10.0, 20.0, 30.0, 40.0]
    assert (p1.view, p1.sex, p1.age, p1.modality) == ("PA", "F", 51, "X-ray")
    assert (p2.finding, p2.label, p2.view, p2.sex, p2.age) == ("Normal", NORMAL, "AP", "M", 62)
    assert p2.provenance["photometric"] == "MONOCHROME1" and p2.provenance["box_count"] == 0
    assert (p3.finding, p3.label) == ("No Lung Opacity / Not Normal", None)
    assert p4.label is None and "class info missing" in p4.finding
    assert p5.error is None and p5.view == "unknown" and "header_error" in p5.provenance and p5.label == PNEUMONIA
    assert p6.label is None, "Target 0 with class 'Lung Opacity' contradicts itself"
    assert p7.error.startswith("missing_file:") and p7.label == NORMAL
    assert p1.source_path == "stage_2_train_images/p1.dcm"
    # without the class file every Target 0 image is unusable, Target 1 still is pneumonia
    (root / "stage_2_detailed_class_info.csv").unlink()
    labels = [r.label for r in read("rsna", root)]
    assert labels == [PNEUMONIA, None, None, None, PNEUMONIA, None, None]


def test_rsna_bad_target_is_a_malformed_row(tmp_path):
    root = tmp_path / "rsna"
    write(root / "stage_2_train_images" / "p1.dcm", dicom_bytes(picture(1), "p1", view="PA", sex="F", age="051"))
    write(root / "stage_2_train_labels.csv", "patientId,x,y,width,height,Target\np1,,,,,maybe\n,,,,,0\np2,1,2\n")
    recs = read("rsna", root)
    assert [r.error.split(":")[0] for r in recs] == ["malformed_row"] * 3
    assert recs[0].path is None and recs[0].patient_key == "rsna:p1"


# ---- the real snapshot --------------------------------------------------------------------------------------------
@pytest.mark.realdata
def test_real_cohen(real_data):
    recs = read("cohen", real_data / "cohen")
    check_contract(recs)
    assert len(recs) == 484
    assert [r for r in recs if r.error] == []
    assert sum(r.modality == "CT" for r in recs) == 12
    assert sum(r.view == "Lateral" for r in recs) == 13
    assert Counter(r.view for r in recs if r.modality == "X-ray") == {"PA": 258, "AP": 110, "AP Supine": 91,
                                                                     "Lateral": 13}
    assert all(re.fullmatch(r"cohen:\S+", r.patient_key) for r in recs)
    assert len({r.path for r in recs}) == 480, "some files are referenced by more than one row"
    assert Counter(r.finding for r in recs)["todo"] == 30
    assert all(r.label is None for r in recs if r.finding in ("todo", "ARDS"))
    assert {r.license for r in recs} >= {None, "CC BY-NC-SA 4.0"} and " " not in {r.license for r in recs}


@pytest.mark.realdata
def test_real_figure1(real_data):
    adapter = make_adapter("figure1", "figure1", real_data / "figure1")
    assert adapter.options["encoding"] == "latin-1"
    recs = list(adapter.checked_records())
    check_contract(recs)
    assert len(recs) == 8 and not any(r.error for r in recs)
    assert Counter(r.patient_key for r in recs)["figure1:COVID-00039"] == 3
    assert Counter(r.label for r in recs) == {COVID: 5, NORMAL: 1, PNEUMONIA: 1, None: 1}
    assert {Path(r.source_path).suffix for r in recs} == {".jpg", ".png"}


@pytest.mark.realdata
def test_real_actualmed(real_data):
    recs = read("actualmed", real_data / "actualmed")
    check_contract(recs)
    assert len(recs) == 6 and not any(r.error for r in recs)
    assert Counter(r.label for r in recs) == {COVID: 3, NORMAL: 2, None: 1}
    assert [r.provenance["notes"] for r in recs if r.label is None][0].startswith("Inconclusive")


@pytest.mark.realdata
def test_real_mhh(real_data):
    recs = read("mhh", real_data / "mhh")
    check_contract(recs)
    assert len(recs) == 6 and not any(r.error for r in recs)
    assert {r.label for r in recs} == {COVID}
    assert len({r.patient_key for r in recs}) == 2
    assert {r.modality for r in recs} == {"X-ray"} and {r.view for r in recs} == {"AP", "PA"}


@pytest.mark.realdata
def test_darkcovidnet_links_republished_cohen_images_to_their_patient(tmp_path):
    base = tmp_path / "dk" / "X-Ray Image DataSet"
    for i, name in enumerate(["Covid-19/ryct.2020.jpeg", "Covid-19/unknown.jpg", "No_findings/00000001_000.png"]):
        write(base / name, encode(picture(i), "png-L"))
    meta = write(tmp_path / "cohen" / "metadata.csv", "patientid,finding,filename\n97,COVID-19,ryct.2020.jpeg\n")
    recs = read("darkcovidnet", tmp_path / "dk", "dk", link_patients={"metadata": str(meta), "source": "cohen"})
    check_contract(recs)
    assert [r.patient_key for r in recs] == ["cohen:97", "dk:unknown", "dk:00000001"]
    assert recs[0].provenance["linked_patient_key"] == "cohen:97"
    with pytest.raises(SourceError, match="does not exist"):
        read("darkcovidnet", tmp_path / "dk", link_patients={"metadata": str(tmp_path / "no.csv"), "source": "c"})


def test_real_darkcovidnet(real_data):
    recs = read("darkcovidnet", real_data / "darkcovidnet")
    check_contract(recs)
    assert len(recs) == 925 and not any(r.error for r in recs)
    assert Counter(r.finding for r in recs) == {"No_findings": 417, "Pneumonia": 394, "Covid-19": 114}
    assert Counter(r.label for r in recs) == {NORMAL: 417, PNEUMONIA: 394, COVID: 114}
    nih = [r for r in recs if r.finding != "Covid-19"]
    assert all(re.fullmatch(r"darkcovidnet:\d{8}", r.patient_key) for r in nih)
    assert len({r.patient_key for r in nih}) == 546
    linked = read("darkcovidnet", real_data / "darkcovidnet",
                  link_patients={"metadata": str(real_data / "cohen/metadata.csv"), "source": "cohen"})
    assert sum(r.patient_key.startswith("cohen:") for r in linked) == 114  # every re-published Cohen image


@pytest.mark.realdata
def test_real_kermany(real_data):
    recs = read("kermany", real_data / "kermany")
    check_contract(recs)
    assert len(recs) == 503 and not any(r.error for r in recs)
    assert Counter(r.label for r in recs) == {NORMAL: 251, PNEUMONIA: 252}
    assert Counter(r.finding for r in recs) == {"NORMAL": 251, "PNEUMONIA/bacteria": 127, "PNEUMONIA/virus": 125}
    # a person's bacteria and virus images share one patient key
    kinds: dict[str, set[str]] = {}
    for r in recs:
        m = re.match(r"person(\d+)_(bacteria|virus)_", Path(r.source_path).name)
        if m:
            assert r.patient_key == f"kermany:person{m.group(1)}"
            kinds.setdefault(r.patient_key, set()).add(m.group(2))
    both = [k for k, v in kinds.items() if v == {"bacteria", "virus"}]
    assert both, "the snapshot has persons with both bacteria and virus images"
    assert all(re.fullmatch(r"kermany:(NORMAL2-)?IM-\d+", r.patient_key) for r in recs if r.label == NORMAL)


def test_parse_age_reads_years_and_dicom_units():
    from cxrspark.sources.base import parse_age
    assert [parse_age(x) for x in ("65", "67+", "065Y", "018M", "030W", "42.0", "", None, "abc", "200")] == \
        [65, 67, 65, 1, 0, 42, None, None, None, None]
