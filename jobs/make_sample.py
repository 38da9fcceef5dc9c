"""Write a small generated sample of every supported source layout (the demo's input).

    python jobs/make_sample.py out/demo/raw
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cxrspark.sample import make_sample_tree  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("root", help="folder to write the source trees into (replaced)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    manifest = make_sample_tree(Path(args.root), seed=args.seed)
    exp = manifest["expected"]
    print(f"sample sources written to {args.root}: {', '.join(s['name'] for s in manifest['sources'])}")
    print(f"planted: {exp}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
