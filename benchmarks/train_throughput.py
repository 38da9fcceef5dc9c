"""Training throughput: Horovod np=1 vs np=2, and the input pipeline alone vs the model's appetite.

    .venv/bin/python benchmarks/train_throughput.py [--dataset out/dataset] [--model seed_cnn]
                                                   [--steps 12] [--batch 32]

All numbers in images/s, measured in this run on this machine:
- input:   the tf.data stream of one rank alone (Petastorm read, decode, shuffle, augmentation
           preset 'light', batch), iterated for --steps batches after one warm-up batch.
- model:   train steps on one in-memory batch repeated (no input pipeline at all): what the model
           can consume in one process using every core.
- np=1/2:  jobs' training loop (cxrspark.train.loop.run_training) under horovodrun, --steps steps per
           epoch, two epochs; the second epoch's training time (validation excluded) is timed, so
           start-up, graph tracing and reader warm-up are left out. images/s = steps x batch x ranks
           / seconds. Scaling efficiency = (np=2) / (2 x np=1).
Input is a bottleneck when 'input' is not well above the model's rate (per rank).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _cfg(args, *extra: str):
    from cxrspark.config import load_config
    return load_config([REPO / "conf/train.yaml"], [f"train.dataset={args.dataset}", f"train.model={args.model}",
                                                   f"train.batch_size={args.batch}", *extra])


def input_rate(args) -> float:
    from cxrspark.train import data as tdata

    cfg = _cfg(args, "train.augment.preset=light")
    info = tdata.load_dataset_info(args.dataset)
    with contextlib.ExitStack() as stack:
        it = iter(tdata.train_dataset(info, cfg.train, 0, 1, stack))
        next(it)
        t = time.perf_counter()
        for _ in range(args.steps):
            next(it)
        return args.steps * args.batch / (time.perf_counter() - t)


def model_rate(args) -> float:
    import numpy as np
    import tensorflow as tf

    from cxrspark.train import data as tdata
    from cxrspark.train.models import build_model

    info = tdata.load_dataset_info(args.dataset)
    model = build_model(args.model, len(info.classes), info.image_size)
    model.compile(tf.keras.optimizers.Adam(1e-3), "categorical_crossentropy")
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (args.batch, info.image_size, info.image_size, 1)).astype("float32")
    y = tf.one_hot(rng.integers(0, len(info.classes), args.batch), len(info.classes))
    model.train_on_batch(x, y)
    t = time.perf_counter()
    for _ in range(args.steps):
        model.train_on_batch(x, y)
    return args.steps * args.batch / (time.perf_counter() - t)


def horovod_rate(args, np_: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, __file__, "--rank-probe", tmp, "--dataset", args.dataset, "--model", args.model,
               "--steps", str(args.steps), "--batch", str(args.batch)]
        if np_ > 1:
            cmd = [str(Path(sys.executable).parent / "horovodrun"), "--gloo", "-np", str(np_),
                   "-H", f"localhost:{np_}", *cmd]
        subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=REPO)
        r = json.loads((Path(tmp) / "rank0.json").read_text())
    seconds = r["epoch_seconds"][-1]
    return {"ranks": np_, "seconds": seconds, "images_per_s": r["steps_seen"][-1] * args.batch * np_ / seconds}


def rank_probe(args) -> None:
    from cxrspark.train.loop import run_training

    cfg = _cfg(args, f"train.output={args.rank_probe}/train", "train.epochs=2", f"train.steps_per_epoch={args.steps}",
               "train.mlflow.log_model=false", "train.schedule.warmup_epochs=0", "train.augment.preset=light")
    result = run_training(cfg)
    if result["rank"] == 0:
        (Path(args.rank_probe) / "rank0.json").write_text(json.dumps(result, default=str))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="out/dataset")
    ap.add_argument("--model", default="seed_cnn")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--rank-probe", help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.dataset = str(Path(args.dataset).resolve())
    if args.rank_probe:
        rank_probe(args)
        return 0
    print(f"dataset {args.dataset}, model {args.model}, batch {args.batch}/rank, {args.steps} steps, "
          f"{os.cpu_count()} cores")
    one = horovod_rate(args, 1)
    two = horovod_rate(args, 2)
    rates = {"input (1 rank, alone)": input_rate(args), "model (1 process, in-memory batch)": model_rate(args),
             "training np=1": one["images_per_s"], "training np=2": two["images_per_s"]}
    for name, v in rates.items():
        print(f"  {name:38s} {v:8.1f} images/s")
    print(f"  scaling efficiency np=2 / (2 x np=1):   {two['images_per_s'] / (2 * one['images_per_s']):.2f}")
    print(f"  input / model rate:                     {rates['input (1 rank, alone)'] / rates['model (1 process, in-memory batch)']:.2f}")
    print(f"  input / training np=2 per-rank rate:    {rates['input (1 rank, alone)'] / (two['images_per_s'] / 2):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
