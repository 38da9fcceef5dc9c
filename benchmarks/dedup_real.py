"""Near-duplicate detection on the real data: recall, false merges, candidate rate, cost, old vs new.

    .venv/bin/python benchmarks/dedup_real.py [--data ../shared/data/cxr] [--rates 0,0.05,0.2]

For each planting rate r, the real snapshot (conf/sources-devdata.yaml sources, with DarkCovidNet's
file-name rule ``link_patients`` OFF, so only pixels can find its copies) plus a source ``planted`` of
round(r * images) synthetic copies of random real images is ingested with the real job (local[2],
64 px stored images). A copy: random crop of 0-25 % per side, resize 0.5-1.2x, gamma 0.6-1.6, rotation
+-5 degrees, JPEG quality 60-95, filed under its own patient key in a COVID-19 Radiography-style
source with the original's class. Printed per run:

- recall of the real copies: a DarkCovidNet ``Covid-19/`` file with the file name of a Cohen image is
  a copy of it (both must reach the dedup stage); found = both in one duplicate group;
- recall of the planted copies (found = in one group with their original);
- false merges: a duplicate group holding images of two different NIH patients (8-digit file-name
  prefix of the DarkCovidNet NIH images), counted as (member, kept) pairs;
- candidate pairs / all pairs of the searched images, verified pairs, the dedup step seconds.

With r = 0 it also compares with the previous method (64-bit pHash within 8 bits AND 32x32 thumbnail
correlation >= 0.95, all pairs computed here in numpy): the image pairs that either method puts in one
group and the other does not, listed by file so that each one can be looked at; and it times, in this
process on one core, the descriptor (``describe``) per image.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import re
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")

CLASS_FOLDER = {"COVID-19": "COVID", "Normal": "Normal", "Pneumonia": "Viral Pneumonia"}
NIH = re.compile(r"(?:No_findings|Pneumonia)/(\d{8})_\d{3}\.png$")


def synthetic_copy(pixels: np.ndarray, rng: np.random.Generator) -> bytes:
    h, w = pixels.shape
    left, right = (rng.uniform(0, 0.25, 2) * w).astype(int)
    top, bottom = (rng.uniform(0, 0.25, 2) * h).astype(int)
    im = Image.fromarray(pixels[top:h - bottom, left:w - right])
    im = im.rotate(float(rng.uniform(-5, 5)), resample=Image.BILINEAR)
    s = float(rng.uniform(0.5, 1.2))
    im = im.resize((max(64, round(im.width * s)), max(64, round(im.height * s))), Image.LANCZOS)
    a = (255.0 * (np.asarray(im, np.float64) / 255.0) ** float(rng.uniform(0.6, 1.6)) + 0.5).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "JPEG", quality=int(rng.integers(60, 96)))
    return buf.getvalue()


def sources(data: Path) -> list[dict]:
    import yaml

    out = yaml.safe_load((REPO / "conf/sources-devdata.yaml").read_text())["sources"]
    for s in out:
        s["root"] = str(data / Path(s["root"]).name)
        s.get("options", {}).pop("link_patients", None)
    return out


def groups_of(out: Path) -> dict[str, str]:
    """record_id -> duplicate group, for curated, dropped and label-conflict rows."""
    import pandas as pd

    g: dict[str, str] = {}
    cur = pd.concat([pd.read_parquet(out / "curated" / s, columns=["record_id", "dup_group"])
                     for s in ("train", "val", "test")])
    g.update({r: d for r, d in zip(cur["record_id"], cur["dup_group"]) if d})
    dups = pd.read_parquet(out / "duplicates", columns=["record_id", "dup_group"])
    g.update(zip(dups["record_id"], dups["dup_group"]))
    q = pd.read_parquet(out / "quarantine", columns=["record_id", "reason"])
    for r, why in zip(q["record_id"], q["reason"]):
        if why.startswith("duplicate_label_conflict"):
            g[r] = why.split(": ", 1)[1].split(" of ")[0]
    return g


def searched_rows(out: Path) -> "pd.DataFrame":
    import pandas as pd

    cur = pd.concat([pd.read_parquet(out / "curated" / s, columns=["record_id", "source", "source_path"])
                     for s in ("train", "val", "test")])
    dups = pd.read_parquet(out / "duplicates", columns=["record_id", "source", "source_path"])
    q = pd.read_parquet(out / "quarantine", columns=["record_id", "source", "source_path", "stage"])
    return pd.concat([cur, dups, q[q["stage"] == "dedup"].drop(columns="stage")], ignore_index=True)


def run(spark, data: Path, rate: float, tmp: Path, seed: int) -> dict:
    from cxrspark.config import load_config
    from cxrspark.images.decode import decode_image
    from cxrspark.ingest.pipeline import run_ingest
    import yaml

    srcs = sources(data)
    planted: dict[str, str] = {}  # planted record_id -> original source_path (relative to data)
    files = sorted(p for p in data.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    labelled = [(p, lab) for p in files for lab in [_label(p)] if lab]
    if rate > 0:
        rng = np.random.default_rng(seed)
        root = tmp / f"planted-{rate}"
        for k in rng.choice(len(labelled), round(rate * len(labelled)), replace=False):
            p, lab = labelled[int(k)]
            rel = f"{CLASS_FOLDER[lab]}/copy-{int(k):05d}.jpg"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(synthetic_copy(decode_image(p.read_bytes()).pixels, rng))
            planted[f"planted:{rel}"] = str(p.relative_to(data))
        srcs.append({"name": "planted", "kind": "covid_radiography", "root": str(root),
                     "options": {"metadata": False}})
    f = tmp / f"sources-{rate}.yaml"
    f.write_text(yaml.safe_dump({"sources": srcs}))
    out = tmp / f"out-{rate}"
    cfg = load_config([REPO / "conf/ingest.yaml", f], [f"ingest.output={out}", "ingest.image_size=64"])
    t0 = time.time()
    summary = run_ingest(spark, cfg, log=lambda _: None)
    seconds = time.time() - t0
    g = groups_of(out)
    rows = searched_rows(out)
    by_path = {(s, p): r for r, s, p in zip(rows["record_id"], rows["source"], rows["source_path"])}
    # real copies: DarkCovidNet Covid-19 files named like a Cohen image
    cohen = {Path(p).name: r for (s, p), r in by_path.items() if s == "cohen"}
    real = [(cohen[Path(p).name], r) for (s, p), r in by_path.items()
            if s == "darkcovidnet" and "/Covid-19/" in p and Path(p).name in cohen]
    real_found = sum(1 for a, b in real if g.get(a) and g.get(a) == g.get(b))
    # planted copies
    pl = []
    for rid, orig in planted.items():
        src = orig.split("/", 1)[0]
        key = (src, orig.split("/", 1)[1])
        if rid in set(rows["record_id"]) and key in by_path:
            pl.append((by_path[key], rid))
    pl_found = sum(1 for a, b in pl if g.get(a) and g.get(a) == g.get(b))
    # false merges: two NIH patients in one group
    members = defaultdict(list)
    for (s, p), r in by_path.items():
        if r in g:
            members[g[r]].append(p)
    false = []
    for grp, ps in members.items():
        nih = sorted({m.group(1) for p in ps for m in [NIH.search(p)] if m})
        if len(nih) > 1:
            false.append((grp, ps))
    n = len(rows)
    dd = {**summary["dedup"], **{f"seconds_{k[len('dedup_'):]}": v for k, v in summary["stage_seconds"].items()
                                 if k.startswith("dedup_")}}
    return {"rate": rate, "images": n, "planted": len(planted), "real_pairs": len(real), "real_found": real_found,
            "planted_pairs": len(pl), "planted_found": pl_found, "false_merge_groups": false,
            "candidates": dd["candidate_pairs"], "verified": dd["verified_pairs"],
            "candidate_rate": dd["candidate_pairs"] / (n * (n - 1) / 2), "dedup": dd, "seconds": seconds,
            "groups": g, "by_path": by_path, "out": out, "planted_list": pl}


def _label(p: Path) -> str | None:
    """The class of a real file for planting (its folder, or Cohen's metadata via the ingest later)."""
    s = str(p)
    if "/Covid-19/" in s or "/cohen/" in s:
        return "COVID-19"
    if "/No_findings/" in s or "/NORMAL/" in s:
        return "Normal"
    if "/Pneumonia/" in s or "/PNEUMONIA/" in s:
        return "Pneumonia"
    return None


def old_method_pairs(data: Path, rel_paths: list[str]) -> set[tuple[str, str]]:
    """Pairs (by relative path) that the previous rule grouped: pHash <= 8 bits and thumbnail corr >= 0.95."""
    from cxrspark.images.decode import decode_image
    from cxrspark.images.hashing import phash, pixel_sha256, to_unsigned64
    from cxrspark.ingest.groups import connected_components

    pix = [decode_image((data / r).read_bytes()).pixels for r in rel_paths]
    h = np.array([to_unsigned64(phash(p)) for p in pix], dtype=np.uint64)
    th = np.stack([np.asarray(Image.fromarray(p).resize((32, 32), Image.BILINEAR), np.float64).ravel() for p in pix])
    th -= th.mean(1, keepdims=True)
    th /= np.linalg.norm(th, axis=1, keepdims=True) + 1e-12
    x = h[:, None] ^ h[None, :]
    dist = sum(((x >> np.uint64(i)) & np.uint64(1)).astype(np.int32) for i in range(64))
    corr = th @ th.T
    sha = [pixel_sha256(p) for p in pix]
    edges = [(rel_paths[i], rel_paths[j]) for i, j in zip(*np.nonzero(np.triu((dist <= 8) & (corr >= 0.95), 1)))]
    edges += [(rel_paths[i], rel_paths[j]) for i in range(len(sha)) for j in range(i + 1, len(sha)) if sha[i] == sha[j]]
    comp = connected_components(edges)
    by = defaultdict(list)
    for node, root in comp.items():
        by[root].append(node)
    return {(a, b) for ms in by.values() for a in ms for b in ms if a < b}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "cxr"))
    ap.add_argument("--rates", default="0,0.05,0.2")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--describe-sample", type=int, default=300, help="images timed for the descriptor cost")
    args = ap.parse_args()
    data = Path(args.data).resolve()
    from cxrspark.spark.session import build_session

    spark = build_session(master="local[2]", log_level="ERROR")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for rate in [float(x) for x in args.rates.split(",")]:
            r = run(spark, data, rate, Path(tmp), args.seed)
            results.append(r)
            print(json.dumps({k: v for k, v in r.items() if k not in ("groups", "by_path", "out", "dedup", "planted_list")}
                             | {"false_merge_groups": len(r["false_merge_groups"])}), flush=True)
            if rate == 0:
                compare(data, r)
    print("\n| planted rate | images searched | real copy pairs found | planted copies found | false merges (NIH) "
          "| candidate pairs | candidate rate | verified pairs | buckets / over cap | pair rows | dedup s (exact+buckets+candidates+verify+groups) |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in results:
        d = r["dedup"]
        secs = "+".join(f"{d.get(k, 0):.1f}" for k in ("seconds_exact", "seconds_buckets", "seconds_candidates",
                                                       "seconds_verify", "seconds_groups"))
        print(f"| {r['rate']:.0%} | {r['images']} | {r['real_found']}/{r['real_pairs']} | "
              f"{r['planted_found']}/{r['planted_pairs']} | {len(r['false_merge_groups'])} | {r['candidates']} | "
              f"{r['candidate_rate']:.2e} | {r['verified']} | {d['buckets']} / {d['over_cap_buckets']} | "
              f"{d['pair_rows']} | {secs} |")
    for r in results:
        for grp, ps in r["false_merge_groups"]:
            print(f"false merge at rate {r['rate']}: {grp}: {ps}")
    describe_cost(data, args.describe_sample)
    spark.stop()
    return 0


def compare(data: Path, r: dict) -> None:
    """Pairs grouped by exactly one of the two methods (by file), for looking at."""
    by_path, g = r["by_path"], r["groups"]
    rel = {rid: f"{s}/{p}" for (s, p), rid in by_path.items()}
    paths = sorted(rel.values())
    old = old_method_pairs(data, paths)
    members = defaultdict(list)
    for rid, grp in g.items():
        if rid in rel:
            members[grp].append(rel[rid])
    new = {(a, b) for ms in members.values() for a in ms for b in ms if a < b}
    print(f"\nold method: {len(old)} grouped pairs; new: {len(new)}; both: {len(old & new)}")
    for name, diff in (("only old", sorted(old - new)), ("only new", sorted(new - old))):
        print(f"{name}: {len(diff)}")
        for a, b in diff:
            print(f"  {a} | {b}")


def describe_cost(data: Path, n: int) -> None:
    from cxrspark.images.decode import decode_image
    from cxrspark.images.keypoints import KeypointParams, describe

    files = sorted(p for p in data.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))[::7][:n]
    pix = [decode_image(p.read_bytes()).pixels for p in files]
    describe(pix[0], KeypointParams())
    t0 = time.perf_counter()
    kps = [describe(p, KeypointParams()) for p in pix]
    per = (time.perf_counter() - t0) / len(pix)
    print(f"\ndescribe: {per * 1000:.1f} ms per image on one core ({len(pix)} real images, "
          f"median {int(np.median([len(k.xy) for k in kps]))} keypoints)")
    from cxrspark.images.copymatch import verify

    rng = np.random.default_rng(1)
    copies = [describe(decode_image(synthetic_copy(p, rng)).pixels, KeypointParams()) for p in pix]
    for name, pairs in (("copy pairs", list(zip(kps, copies))), ("different images", list(zip(kps, kps[1:])))):
        t0 = time.perf_counter()
        v = [verify(a.image, a.xy, a.desc, b.image, b.xy, b.desc) for a, b in pairs]
        per = (time.perf_counter() - t0) / len(pairs)
        print(f"verify, {name}: {per * 1000:.2f} ms per pair on one core, {sum(x.copy for x in v)}/{len(v)} copies")


if __name__ == "__main__":
    sys.exit(main())
