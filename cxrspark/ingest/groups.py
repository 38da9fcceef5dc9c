"""Union-find: connected components over pairs (duplicate groups, linked patients), and duplicate groups
that do not chain. Pure Python."""
from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from typing import Any


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


def strict_groups(components: Iterable[list[Hashable]], rank: Callable[[Hashable], Any],
                  verdict: Callable[[Hashable, Hashable], bool | None],
                  verify: Callable[[list[tuple[Hashable, Hashable]]], None],
                  edges: Iterable[tuple[Hashable, Hashable]]) -> list[list[Hashable]]:
    """Duplicate groups without chaining: every member is a verified copy of its group's kept image.

    ``components``: the connected components of the verified copy ``edges``. In each, the best member by
    ``rank`` (lowest first) is the representative; a member joins its group only if ``verdict(rep, x)`` is
    true. Pairs whose verdict is not known yet (``None``: never a candidate) are passed to ``verify`` in
    one batch per round, which must make ``verdict`` answer them. The members that are not copies of the
    representative are split into components again through the edges among themselves, and the same is
    repeated on them, so A~B, B~C never puts A and C in one group unless C verifies against the kept one.
    Returns the groups (representative first) of two or more members.
    """
    edges = list(edges)
    pending = [sorted(c, key=rank) for c in components if len(c) > 1]
    groups: list[list[Hashable]] = []
    while pending:
        missing = [(c[0], x) for c in pending for x in c[1:] if verdict(c[0], x) is None]
        if missing:
            verify(missing)
        nxt = []
        for comp in pending:
            rep = comp[0]
            members = [rep] + [x for x in comp[1:] if verdict(rep, x)]
            if len(members) > 1:
                groups.append(members)
            rest = set(comp) - set(members)
            if len(rest) > 1:
                sub = connected_components((a, b) for a, b in edges if a in rest and b in rest)
                by_root: dict[Hashable, list[Hashable]] = {}
                for node, root in sub.items():
                    by_root.setdefault(root, []).append(node)
                nxt += [sorted(v, key=rank) for v in by_root.values() if len(v) > 1]
        pending = nxt
    return groups
