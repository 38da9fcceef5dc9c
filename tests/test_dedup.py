"""Near-duplicate detection: keypoint buckets, copy verification and groups that do not chain.

Pure functions on generated pictures (cxrspark.sample.textured_cxr), the Spark stage on a real
SparkSession over real files, and the real chest X-rays when ../shared/data/cxr is present.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from cxrspark.config import load_config
from cxrspark.images.copymatch import verify
from cxrspark.images.decode import decode_image
from cxrspark.images.keypoints import KeypointParams, TABLE_SHIFT, describe, lsh_digest, trim_flat_borders
from cxrspark.ingest.buckets import ROWS_PER_IMAGE, bucket_pairs, pair_counts
from cxrspark.ingest.groups import strict_groups
from cxrspark.sample import textured_cxr

REPO = Path(__file__).resolve().parents[1]


# ---- groups without chaining (pure) ---------------------------------------------------------------
def _grouping(edges, copies, rank_order):
    """strict_groups over one component with a verdict table; returns (groups, pairs asked for)."""
    known = {frozenset(e): True for e in edges}
    asked = []

    def verdict(x, y):
        return known.get(frozenset((x, y)))

    def more(pairs):
        asked.extend(pairs)
        for x, y in pairs:
            known[frozenset((x, y))] = frozenset((x, y)) in copies

    nodes = sorted({n for e in edges for n in e})
    return strict_groups([nodes], rank_order.index, verdict, more, edges), asked


def test_a_chain_does_not_merge_two_images_that_do_not_verify_against_the_kept_one():
    groups, asked = _grouping([("A", "B"), ("B", "C")], copies=set(), rank_order=["A", "B", "C"])
    assert asked == [("A", "C")]  # never a candidate: verified in a second round
    assert groups == [["A", "B"]]  # C stays out: it is no copy of the kept A


def test_a_member_that_verifies_against_the_kept_one_in_the_second_round_joins():
    groups, _ = _grouping([("A", "B"), ("B", "C")], copies={frozenset(("A", "C"))}, rank_order=["A", "B", "C"])
    assert groups == [["A", "B", "C"]]


def test_members_left_out_form_their_own_groups_through_their_own_edges():
    groups, asked = _grouping([("A", "B"), ("B", "C"), ("C", "D")], copies=set(), rank_order=["A", "B", "C", "D"])
    assert sorted(asked) == [("A", "C"), ("A", "D")]
    assert groups == [["A", "B"], ["C", "D"]]


# ---- keypoints ------------------------------------------------------------------------------------
def test_keypoints_and_bucket_keys_are_deterministic_and_the_projection_is_versioned():
    img = textured_cxr(1)
    p = KeypointParams()
    a, b = describe(img, p), describe(img.copy(), p)
    assert len(a.xy) == len(a.desc) > 100 and len(a.keys) % p.tables == 0 and len(a.keys) >= len(a.xy) * p.tables
    assert np.array_equal(a.keys, b.keys) and np.array_equal(a.desc, b.desc)
    tables = a.keys >> TABLE_SHIFT
    assert np.array_equal(tables.reshape(-1, p.tables), np.tile(np.arange(p.tables), (len(a.keys) // p.tables, 1)))
    assert len({lsh_digest(8, 40), lsh_digest(8, 36), lsh_digest(6, 40)}) == 3
    assert lsh_digest(8, 40) == lsh_digest(8, 40)


def test_weak_keypoints_are_bucketed_and_verification_keeps_the_strong_ones():
    """A low-contrast film: SIFT at 0.01 finds more keypoints to bucket than at 0.02; verification matches
    exactly the keypoints (and descriptors) of SIFT at 0.02, the set its thresholds were measured on."""
    img = (textured_cxr(2).astype(np.float32) * 0.25 + 90).astype(np.uint8)
    new = describe(img, KeypointParams())
    old = describe(img, KeypointParams(contrast_threshold=0.02))
    assert len(old.xy) < KeypointParams().n_keypoints  # the test needs a film with few strong keypoints
    assert np.array_equal(new.xy, old.xy) and np.array_equal(new.desc, old.desc)
    assert len(new.keys) > len(old.keys) and np.array_equal(new.keys[:len(old.keys)], old.keys)


def _pairs_by_brute_force(key, iid, kp, cap):
    out = []
    for k in set(key.tolist()):
        at = np.flatnonzero(key == k)
        if not 2 <= len(set(iid[at].tolist())) <= cap or len(at) > ROWS_PER_IMAGE * cap:
            continue
        for x in at:
            for y in at:
                if iid[x] < iid[y]:
                    out.append((int(iid[x]), int(iid[y]), int(kp[x]), int(kp[y])))
    return sorted(out)


def test_bucket_pairs_are_every_pair_of_rows_of_two_images_in_a_bucket_under_the_cap():
    rng = np.random.default_rng(3)
    n = 4000
    key = rng.integers(0, 900, n)          # buckets of about 4 rows, some large
    key[:300] = 7                          # one bucket over the cap of images
    key[300:300 + 40] = 8                  # one image repeating a key: over the cap of rows
    iid = rng.integers(-2**62, 2**62, 300)[rng.integers(0, 300, n)]
    iid[300:340] = iid[300]
    kp = rng.integers(0, 300, n)
    cap = 5
    *rows, stats = bucket_pairs(key, iid, kp, cap)
    got = sorted(zip(*[r.tolist() for r in rows]))
    assert got == _pairs_by_brute_force(key, iid, kp, cap)
    assert (rows[0] < rows[1]).all() and stats["pair_rows"] == len(got)
    assert stats["keypoint_rows"] == n and stats["buckets"] == len(set(key.tolist()))
    assert stats["over_cap_buckets"] >= 2 and stats["max_bucket_images"] > cap
    assert stats["over_cap_rows"] >= 340
    # the order of the rows does not matter
    p = rng.permutation(n)
    again = bucket_pairs(key[p], iid[p], kp[p], cap)
    assert sorted(zip(*[a.tolist() for a in again[:4]])) == got
    assert bucket_pairs(key[:0], iid[:0], kp[:0], cap)[4]["buckets"] == 0


def test_shared_keypoints_of_a_pair_are_the_fewer_distinct_keypoints_of_either_image():
    # pair (1, 2): keypoint 5 of image 1 meets keypoints 7 and 8 of image 2 (two tables), 6 meets 7
    # -> image 1 has 2 distinct keypoints in the rows, image 2 has 2 -> 2; pair (1, 3): 1 row -> 1
    ia = np.array([1, 1, 1, 1, 1]); ib = np.array([2, 2, 2, 3, 2])
    ka = np.array([5, 5, 6, 9, 5]); kb = np.array([7, 8, 7, 4, 7])
    p = np.array([4, 2, 0, 3, 1])  # any order
    a, b, shared, rows = pair_counts(ia[p], ib[p], ka[p], kb[p])
    assert dict(zip(zip(a.tolist(), b.tolist()), zip(shared.tolist(), rows.tolist()))) == {(1, 2): (2, 4), (1, 3): (1, 1)}
    # one keypoint of a meeting many keypoints of b is one shared keypoint, not many
    a, b, shared, rows = pair_counts(np.ones(6, int), np.full(6, 2), np.zeros(6, int), np.arange(6))
    assert shared.tolist() == [1] and rows.tolist() == [6]


def test_flat_borders_are_trimmed():
    img = textured_cxr(2, 200, 180)
    padded = np.zeros((260, 300), np.uint8)
    padded[30:230, 70:250] = img
    assert np.array_equal(trim_flat_borders(padded), img)
    flat = np.full((100, 100), 7, np.uint8)
    assert trim_flat_borders(flat) is flat  # nothing to keep: the image as it is


# ---- verification: copies of every kind, look-alikes ---------------------------------------------
def _jpeg(a: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "JPEG", quality=quality)
    return decode_image(buf.getvalue()).pixels


def _crop(a: np.ndarray, left: float, right: float, top: float, bottom: float) -> np.ndarray:
    h, w = a.shape
    return a[int(top * h):h - int(bottom * h), int(left * w):w - int(right * w)]


def _resize(a: np.ndarray, sx: float, sy: float) -> np.ndarray:
    return np.asarray(Image.fromarray(a).resize((round(a.shape[1] * sx), round(a.shape[0] * sy)), Image.LANCZOS))


def _gamma(a: np.ndarray, g: float) -> np.ndarray:
    return (255.0 * (a / 255.0) ** g + 0.5).astype(np.uint8)


def _rotate(a: np.ndarray, deg: float) -> np.ndarray:
    return np.asarray(Image.fromarray(a).rotate(deg, resample=Image.BILINEAR))


def _labelled(a: np.ndarray) -> np.ndarray:
    """The film with a burnt-in marker and text box (the original); copies come without it."""
    im = Image.fromarray(a.copy())
    d = ImageDraw.Draw(im)
    d.rectangle((10, 10, 90, 40), fill=255)
    d.text((15, 15), "L  AP", fill=0)
    d.polygon([(300, 300), (340, 310), (310, 330)], fill=255)  # an arrow
    return np.asarray(im)


COPIES = {
    "crop 25% per side": lambda a: _crop(a, 0.25, 0.25, 0.25, 0.25),
    "uneven crop": lambda a: _crop(a, 0.25, 0.05, 0.2, 0.1),
    "off-centre crop": lambda a: _crop(a, 0.0, 0.25, 0.25, 0.0),
    "aspect changed": lambda a: _resize(a, 0.8, 0.95),
    "resized 0.5x": lambda a: _resize(a, 0.5, 0.5),
    "gamma 0.6": lambda a: _gamma(a, 0.6),
    "gamma 1.6": lambda a: _gamma(a, 1.6),
    "jpeg 60": lambda a: _jpeg(a, 60),
    "rotated 5 deg": lambda a: _rotate(a, 5),
    "label removed": lambda a: a,  # the original carries the label, see below
    "everything at once": lambda a: _jpeg(_gamma(_resize(_rotate(_crop(a, 0.2, 0.1, 0.15, 0.2), -4), 0.75, 0.8), 0.7), 70),
}


@pytest.mark.parametrize("kind", sorted(COPIES))
def test_copies_of_every_kind_verify(kind):
    for seed in (3, 4, 5):
        base = textured_cxr(seed)
        original = _labelled(base) if kind == "label removed" else base
        a, b = describe(original), describe(COPIES[kind](base))
        v = verify(a.image, a.xy, a.desc, b.image, b.xy, b.desc)
        assert v.copy, (kind, seed, v)
        assert v.detail >= 0.45 and v.overlap >= 0.5 and v.inliers >= 8


def test_look_alikes_do_not_verify():
    pics = [describe(textured_cxr(seed)) for seed in range(10, 18)]
    for i in range(len(pics)):
        for j in range(i + 1, len(pics)):
            a, b = pics[i], pics[j]
            v = verify(a.image, a.xy, a.desc, b.image, b.xy, b.desc)
            assert not v.copy, (i, j, v)


def test_mirrored_and_strongly_rotated_copies_are_out_of_scope():
    base = textured_cxr(6)
    a = describe(base)
    for copy in (base[:, ::-1], _rotate(base, 45)):
        b = describe(np.ascontiguousarray(copy))
        assert not verify(a.image, a.xy, a.desc, b.image, b.xy, b.desc).copy


# ---- the Spark stage ------------------------------------------------------------------------------
def _png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "PNG")
    return buf.getvalue()


def _decoded(spark, tmp: Path, images: dict[str, np.ndarray]):
    """The ingest's decode stage over PNG files of ``images`` (record_id -> pixels)."""
    from pyspark.sql import functions as F

    from cxrspark.ingest.stages import decode

    cfg = load_config([REPO / "conf/ingest.yaml"], ["ingest.image_size=64"])
    rows = []
    for rid, px in images.items():
        path = tmp / f"{rid}.png"
        path.write_bytes(_png(px))
        rows.append((rid, "s", str(path), "Normal", f"s:{rid}"))
    df = spark.createDataFrame(rows, "record_id string, source string, path string, label string, patient_key string")
    df = df.withColumn("source_path", F.col("path"))
    return decode(spark, df, cfg).where(F.col("decode_error").isNull()), cfg


def test_spark_stage_finds_planted_copies_keeps_look_alikes_apart_and_is_repeatable(spark, tmp_path):
    from cxrspark.ingest.dedup import find_duplicates

    images = {f"base{i}": textured_cxr(20 + i) for i in range(8)}  # 8 look-alikes
    images["copy0-crop"] = _crop(images["base0"], 0.2, 0.05, 0.1, 0.15)
    images["copy0-jpeg"] = _jpeg(_gamma(images["base0"], 1.4), 65)
    images["copy1-resize"] = _resize(_rotate(images["base1"], 3), 0.6, 0.66)
    images["copy2-exact"] = images["base2"].copy()
    ok, cfg = _decoded(spark, tmp_path, images)
    runs = [find_duplicates(spark, ok, cfg.ingest.dedup, ["s"], str(tmp_path / f"work{k}"), log=lambda _: None)
            for k in range(2)]
    r = runs[0]
    groups = {}
    for rid, (gid, rep) in r.membership.items():
        groups.setdefault(gid, set()).add(rid)
    assert sorted(map(sorted, groups.values())) == [["base0", "copy0-crop", "copy0-jpeg"],
                                                    ["base1", "copy1-resize"], ["base2", "copy2-exact"]]
    # the keep rule: most original pixels (the uncropped, full-size originals)
    assert {rep for _, rep in r.membership.values()} == {"base0", "base1", "base2"}
    kinds = {d["record_id"]: d["kind"] for d in r.report}
    assert kinds == {"copy0-crop": "near", "copy0-jpeg": "near", "copy1-resize": "near", "copy2-exact": "exact"}
    st = r.stats
    assert st["candidate_pairs"] >= st["verified_pairs"] >= 3 and st["exact_pairs"] == 1
    assert st["keypoint_rows"] >= st["buckets"] > st["shared_buckets"] > 0
    for k in ("seconds_exact", "seconds_buckets", "seconds_candidates", "seconds_verify", "seconds_groups"):
        assert st[k] >= 0
    # the same input gives the same groups and report
    assert runs[1].membership == r.membership and runs[1].report == r.report


def test_spark_stage_does_not_chain_through_a_middle_image(spark, tmp_path):
    """wide = the whole film (most pixels, so it is kept), left and right = its two outer 60 % halves at
    half size, mid = the middle 60 %: left ~ mid ~ right, but left and right overlap too little."""
    from cxrspark.ingest.dedup import find_duplicates

    film = textured_cxr(40, 420, 700)
    images = {"left": _resize(_crop(film, 0.0, 0.45, 0, 0), 0.8, 0.8),
              "right": _resize(_crop(film, 0.45, 0.0, 0, 0), 0.8, 0.8),
              "middle": _crop(film, 0.2, 0.2, 0, 0)}
    images["left"] = _resize(images["left"], 1.6, 1.6)  # the largest: the one a group keeps
    ok, cfg = _decoded(spark, tmp_path, images)
    r = find_duplicates(spark, ok, cfg.ingest.dedup, ["s"], str(tmp_path / "work"), log=lambda _: None)
    gid = {rid: g for rid, (g, _) in r.membership.items()}
    assert gid.get("left") and gid.get("left") == gid.get("middle")  # middle is a copy of the kept left
    assert gid.get("right") != gid.get("left")  # right is not, though right ~ middle
    assert "right" not in {d["record_id"] for d in r.report}  # so it is not dropped as a duplicate ...
    assert ("s:middle", "s:right") in r.patient_links or ("s:right", "s:middle") in r.patient_links  # ... but split with it


# ---- the real data --------------------------------------------------------------------------------
@pytest.mark.realdata
def test_real_republished_copies_verify_and_real_look_alikes_do_not(real_data):
    """DarkCovidNet's Covid-19 folder re-publishes Cohen films (often re-cropped, re-windowed); NIH films
    of different patients look alike and must not verify."""
    cohen = {p.name: p for p in (real_data / "cohen" / "images").iterdir()}
    dark = sorted((real_data / "darkcovidnet" / "X-Ray Image DataSet" / "Covid-19").iterdir())
    pairs = [(cohen[p.name], p) for p in dark if p.name in cohen][:40]
    assert len(pairs) == 40
    found = 0
    for a, b in pairs:
        ka, kb = (describe(decode_image(p.read_bytes()).pixels) for p in (a, b))
        found += verify(ka.image, ka.xy, ka.desc, kb.image, kb.xy, kb.desc).copy
    assert found >= 38
    nih = sorted((real_data / "darkcovidnet" / "X-Ray Image DataSet" / "No_findings").iterdir())
    by_patient = {}
    for p in nih:
        by_patient.setdefault(p.name[:8], p)
    films = [describe(decode_image(p.read_bytes()).pixels) for p in list(by_patient.values())[:30]]
    for i in range(len(films)):
        for j in range(i + 1, len(films)):
            a, b = films[i], films[j]
            assert not verify(a.image, a.xy, a.desc, b.image, b.xy, b.desc).copy
