"""Test helper: run the training loop (as every rank does) and write this rank's result as JSON.

    [horovodrun -np N] python tests/train_probe.py OUT_DIR [--resume] [KEY=VALUE ...]
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from cxrspark.config import load_config  # noqa: E402
from cxrspark.train.loop import run_training  # noqa: E402

out, *rest = sys.argv[1:]
cfg = load_config([REPO / "conf/train.yaml"], [a for a in rest if a != "--resume"])
result = run_training(cfg, resume="--resume" in rest)
Path(out).mkdir(parents=True, exist_ok=True)
(Path(out) / f"rank{result['rank']}.json").write_text(json.dumps(result, default=str))
