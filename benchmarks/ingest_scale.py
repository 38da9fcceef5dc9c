"""The whole ingest at archive scale: an NIH-sized source, 10^4 -> 1.1 x 10^5 images, on this machine.

    .venv/bin/python benchmarks/ingest_scale.py --sizes 10000,30000,112120 [--work DIR] [--cores 2]

Source: an NIH ChestX-ray14 layout (``images/`` + the REAL ``Data_Entry_2017_v2020.csv`` rows, from
../shared/data/meta/nih/) with pixels derived from the real developer images by benchmarks/synth_nih.py:
each image keeps a real film's low frequencies and gets content of its own above them, so the images are
distinct; 1 % are planted re-published copies of another row's image. The largest size is generated once
under --work (kept for later runs); a smaller size reads the first N rows of the same metadata.

Each size runs ``run_ingest`` (decode, hashes, keypoints, dedup, split, write, summary; conf/ingest.yaml
defaults) in a fresh process with Spark local[--cores], and reports: seconds per stage (summary.json
``stage_seconds``), images/s, the peak RSS of the Python driver and of the JVM (local mode: the JVM is
driver and executors), the shuffle bytes written (Spark's REST API), the dedup's candidate pairs, the
planted copies found, and any other duplicate found (goal 0: the generator makes distinct images).
Ends with the fitted growth exponent of every stage (1.0 = linear) and the line
``per-image cost ratio largest/smallest: X.XX``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

NIH_META = REPO.parent / "shared" / "data" / "meta" / "nih" / "Data_Entry_2017_v2020.csv.gz"
STAGES = ("sources", "file_checks", "decode", "dedup", "split", "write", "summary")


def prepare_source(work: Path, largest: int, size: int, workers: int) -> Path:
    """The generated NIH source for ``largest`` rows (reused when a previous run made the same one)."""
    from synth_nih import generate

    root = work / "nih"
    manifest = root / "synth_manifest.json"
    if manifest.is_file():
        m = json.loads(manifest.read_text())
        if m.get("n") == largest and m.get("size") == size:
            return root
    t = time.time()
    generate(root, largest, size=size, workers=workers)
    print(f"generated {largest:,} images in {time.time() - t:.0f} s under {root}", flush=True)
    return root


def subset_metadata(root: Path, n: int) -> str:
    """A metadata file of the first n rows, beside the full one (same root, so the same images)."""
    name = f"Data_Entry_first_{n}.csv"
    full = root / "Data_Entry_2017_v2020.csv"
    with full.open() as src, (root / name).open("w") as dst:
        for i, line in enumerate(src):
            if i > n:
                break
            dst.write(line)
    return name


def run_one(args: argparse.Namespace) -> int:
    """One ingest in this process; prints a JSON line of its measurements."""
    import urllib.request

    import yaml

    from cxrspark.config import load_config
    from cxrspark.ingest.pipeline import run_ingest
    from cxrspark.spark.session import build_session

    out = Path(args.out)
    srcs = out.parent / f"sources-{args.n}.yaml"
    srcs.write_text(yaml.safe_dump({"sources": [{"name": "nih", "kind": "nih", "root": args.root,
                                                 "options": {"metadata": args.metadata}}]}))
    cfg = load_config([REPO / "conf/ingest.yaml", srcs], [f"ingest.output={out}"])
    spark = build_session(master=f"local[{args.cores}]", app_name="ingest_scale", log_level="ERROR",
                          conf={"spark.driver.memory": args.driver_memory})
    jvm_pid = int(spark._jvm.java.lang.ProcessHandle.current().pid())
    t = time.time()
    summary = run_ingest(spark, cfg, log=lambda line: print(line, file=sys.stderr, flush=True))
    seconds = time.time() - t
    shuffle = None
    try:
        sc = spark.sparkContext
        with urllib.request.urlopen(f"{sc.uiWebUrl}/api/v1/applications/{sc.applicationId}/stages"
                                    "?status=complete", timeout=30) as r:
            stages = json.load(r)
        shuffle = sum(s.get("shuffleWriteBytes", 0) for s in stages)
    except Exception as exc:  # noqa: BLE001 - shuffle bytes are extra
        print(f"no shuffle figures: {exc}", file=sys.stderr)
    jvm_rss = None
    try:
        for line in Path(f"/proc/{jvm_pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                jvm_rss = int(line.split()[1]) * 1024
    except OSError:
        pass
    spark.stop()
    driver_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # before this script's own reads
    print(json.dumps({
        "n": args.n, "seconds": seconds, "stage_seconds": summary["stage_seconds"],
        "driver_rss": driver_rss, "jvm_rss": jvm_rss,
        "shuffle_bytes": shuffle, "candidate_pairs": summary["dedup"]["candidate_pairs"],
        "verified_pairs": summary["dedup"]["verified_pairs"], "counts": summary["counts"],
        **planted_stats(Path(args.root), out),
    }))
    return 0


def planted_stats(root: Path, out: Path) -> dict:
    """Planted copy pairs the dedup saw (both images reached it, i.e. were not filtered by their NIH label;
    two copies of one original are a pair too) and found (in one duplicate group, or in one group
    quarantined for its conflicting labels), and pairs grouped that were not planted (goal 0)."""
    import pandas as pd

    name = lambda rid: rid.split(":", 1)[1]  # noqa: E731
    origin: dict[str, str] = {}
    for copy, original in json.loads((root / "synth_manifest.json").read_text())["planted"]:
        origin[copy] = original
        origin.setdefault(original, original)
    dups = pd.read_parquet(out / "duplicates", columns=["record_id", "duplicate_of", "dup_group"])
    group = {name(r): g for r, g in zip(dups["record_id"], dups["dup_group"])}
    group.update({name(r): g for r, g in zip(dups["duplicate_of"], dups["dup_group"])})
    q = pd.read_parquet(out / "quarantine", columns=["record_id", "stage", "reason"])
    q = q[q["stage"] == "dedup"]
    group.update({name(r): why.split(" of ")[0] for r, why in zip(q["record_id"], q["reason"])})
    seen = set(group) | {name(r) for r in pd.read_parquet(out / "curated", columns=["record_id"])["record_id"]}

    def pairs(key: dict[str, str]) -> set[tuple[str, str]]:
        members: dict[str, list[str]] = {}
        for x, k in key.items():
            members.setdefault(k, []).append(x)
        return {(a, b) for m in members.values() for a in m for b in m if a < b}

    truth = pairs({x: o for x, o in origin.items() if x in seen})
    found = pairs(group)
    return {"planted": len(truth), "planted_found": len(truth & found), "other_duplicates": len(found - truth),
            "other_examples": sorted(found - truth)[:5]}


def slope(xs: list[float], ys: list[float]) -> float:
    lx, ly = [math.log(x) for x in xs], [math.log(max(y, 1e-3)) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    den = sum((a - mx) ** 2 for a in lx)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / den if den else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10000,30000,112120")
    ap.add_argument("--work", default=None, help="folder for the generated source and outputs (default: temporary)")
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--size", type=int, default=256, help="px of the generated images")
    ap.add_argument("--driver-memory", default="4g")
    ap.add_argument("--table", action="store_true",
                    help="print the table again from the measurements kept under --work (planted counts redone)")
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--root", help=argparse.SUPPRESS)
    ap.add_argument("--metadata", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        return run_one(args)
    if not NIH_META.is_file():
        print(f"the real NIH metadata is not at {NIH_META}", file=sys.stderr)
        return 2
    sizes = sorted(int(s) for s in args.sizes.split(","))
    if args.table:
        work = Path(args.work)
        results = [{**json.loads((work / f"result-{n}.json").read_text()),
                    **planted_stats(work / "nih", work / f"out-{n}")} for n in sizes]
        report(results, args)
        return 0
    tmp = None if args.work else tempfile.TemporaryDirectory()
    work = Path(args.work or tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    root = prepare_source(work, sizes[-1], args.size, args.cores)
    results = []
    for n in sizes:
        meta = subset_metadata(root, n)
        out = work / f"out-{n}"
        cmd = [sys.executable, __file__, "--one", "--n", str(n), "--root", str(root), "--metadata", meta,
               "--out", str(out), "--cores", str(args.cores), "--driver-memory", args.driver_memory]
        print(f"ingest of {n:,} images ...", flush=True)
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        if proc.returncode != 0:
            print(f"ingest of {n} failed (exit {proc.returncode})", file=sys.stderr)
            return 1
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        r = results[-1]
        (work / f"result-{n}.json").write_text(json.dumps(r, indent=1))  # kept if a later size fails
        print(f"  {r['seconds']:.0f} s, {n / r['seconds']:.1f} images/s", flush=True)

    report(results, args)
    return 0


def report(results: list[dict], args: argparse.Namespace) -> None:
    gib = 2 ** 30
    print(f"\nspark local[{args.cores}], driver memory {args.driver_memory}, generated {args.size} px PNGs\n")
    print("| N | decoded | seconds | images/s | ms per image (x cores) | " + " | ".join(STAGES)
          + " | driver peak RSS | JVM peak RSS | shuffle written | candidate pairs | planted found | other duplicates |")
    print("| ---: " * (5 + len(STAGES) + 6) + "|")
    for r in results:
        st = r["stage_seconds"]
        c = r["counts"]  # every image not filtered by its label reached decoding (no missing files here)
        print(f"| {r['n']:,} | {c['curated'] + c['duplicate'] + c['quarantined']:,} | {r['seconds']:.0f} | {r['n'] / r['seconds']:.1f} | "
              f"{1000 * r['seconds'] * args.cores / r['n']:.1f} | "
              + " | ".join(f"{st.get(s, 0):.0f}" for s in STAGES)
              + f" | {r['driver_rss'] / gib:.2f} GiB | {(r['jvm_rss'] or 0) / gib:.2f} GiB | "
              f"{(r['shuffle_bytes'] or 0) / gib:.2f} GiB | {r['candidate_pairs']:,} | "
              f"{r['planted_found']}/{r['planted']} | {r['other_duplicates']} |")
    ns = [r["n"] for r in results]
    if len(ns) > 1:
        exps = {s: slope(ns, [r["stage_seconds"].get(s, 0) for r in results]) for s in STAGES}
        exps["whole ingest"] = slope(ns, [r["seconds"] for r in results])
        exps["candidate pairs"] = slope(ns, [max(1, r["candidate_pairs"]) for r in results])
        print("\ngrowth exponents (seconds ~ N^k): " + ", ".join(f"{k} {v:.2f}" for k, v in exps.items()))
        print(f"driver peak RSS largest/smallest: {results[-1]['driver_rss'] / results[0]['driver_rss']:.2f}")
    for r in results:
        if r["other_examples"]:
            print(f"N={r['n']}: other duplicates, e.g. {r['other_examples']}")
    ratio = (results[-1]["seconds"] / results[-1]["n"]) / (results[0]["seconds"] / results[0]["n"])
    print(f"per-image cost ratio largest/smallest: {ratio:.2f}")


if __name__ == "__main__":
    sys.exit(main())
