"""Patient-level, class-stratified, deterministic split. Pure Python.

The unit of splitting is a *split group*: a patient, or several patient keys linked because a
duplicate group joins them. A unit never straddles two splits. Units are stratified by their rarest
class (a patient with COVID-19 and Normal images counts as COVID-19 when COVID-19 is rarer), ordered
by a seeded hash of their name (independent of input order and of Python's hash seed), and each goes to
the split furthest below its image-count target within its stratum.
"""
from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable


def assign_splits(images: Iterable[tuple[str, str]], ratios: dict[str, float], seed: int) -> dict[str, str]:
    """images: (split_group, label) per curated image. Returns split_group -> split name."""
    return assign_unit_splits(Counter(images).items(), ratios, seed)


def assign_unit_splits(counts: Iterable[tuple[tuple[str, str], int]], ratios: dict[str, float],
                       seed: int) -> dict[str, str]:
    """counts: ((split_group, label), number of curated images), one per unit and label: the per-unit
    aggregate the ingest computes in Spark. Returns split_group -> split name."""
    totals: Counter = Counter()
    unit_labels: dict[str, Counter] = {}
    for (unit, label), n in counts:
        totals[label] += n
        unit_labels.setdefault(unit, Counter())[label] += n
    strata: dict[str, list[tuple[str, int]]] = {}
    for unit, labels in unit_labels.items():
        rarest = min(labels, key=lambda lab: (totals[lab], lab))
        strata.setdefault(rarest, []).append((unit, sum(labels.values())))

    names = [n for n, r in ratios.items() if r > 0]
    out: dict[str, str] = {}
    for stratum in sorted(strata):
        units = sorted(strata[stratum], key=lambda u: _order_key(u[0], seed))
        total = sum(n for _, n in units)
        filled = {name: 0 for name in names}
        for unit, n in units:
            # deficit relative to target; ties go to the split listed first in the config
            best = max(names, key=lambda s: (ratios[s] * total - filled[s], -names.index(s)))
            out[unit] = best
            filled[best] += n
    return out


def _order_key(unit: str, seed: int) -> str:
    return hashlib.sha256(f"{seed}:{unit}".encode()).hexdigest()
