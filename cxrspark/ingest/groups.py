"""Union-find: connected components over pairs (duplicate groups, linked patients). Pure Python."""
from __future__ import annotations

from collections.abc import Hashable, Iterable


class UnionFind:
    def __init__(self) -> None:
        self.parent: dict[Hashable, Hashable] = {}

    def find(self, x: Hashable) -> Hashable:
        self.parent.setdefault(x, x)
        root = x
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[x] != root:  # path compression
            self.parent[x], x = root, self.parent[x]
        return root

    def union(self, a: Hashable, b: Hashable) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            # the smaller key becomes the root: components get a deterministic name
            lo, hi = (ra, rb) if str(ra) <= str(rb) else (rb, ra)
            self.parent[hi] = lo

    def components(self) -> dict[Hashable, list[Hashable]]:
        out: dict[Hashable, list[Hashable]] = {}
        for x in list(self.parent):
            out.setdefault(self.find(x), []).append(x)
        return {k: sorted(v, key=str) for k, v in out.items()}


def connected_components(pairs: Iterable[tuple[Hashable, Hashable]]) -> dict[Hashable, Hashable]:
    """Map every node that appears in a pair to its component's name (the smallest member)."""
    uf = UnionFind()
    for a, b in pairs:
        uf.union(a, b)
    return {x: uf.find(x) for x in uf.parent}
