"""A vectorised hash index from int64 voxel keys to int64 rows (open addressing, linear probing).

The semantic map looks up every voxel of a cloud (~25k keys) in an index of up
to ``max_voxels`` keys once per cloud. A sorted index pays O(V) work whenever
new keys join it (the previous design merged a 100k-key delta level into the
main array every few clouds: 30-50 ms spikes at 476k voxels); this table does
O(cloud) work per lookup, insert and removal, with numpy operations over the
whole batch of keys in each probing round and no per-key Python loop.

Layout: ``table_keys`` (S,) int64 and ``table_rows`` (S,) int64, S a power of
two kept at least twice the number of occupied slots. Keys must be >= 0 (the
map's packed keys are); :data:`EMPTY` (-1) marks a free slot and
:data:`TOMBSTONE` (-2) a removed key, which lookups probe past and inserts
reuse. When live keys plus tombstones pass :data:`MAX_LOAD` of the table it is
rebuilt (grown when the live keys alone need it).

Hash: Fibonacci hashing (the key times 2^64 / phi, top bits), which spreads
the map's spatially coherent keys evenly over the table.
"""
from __future__ import annotations

import numpy as np

EMPTY = -1
TOMBSTONE = -2
#: Largest share of the table's slots that live keys and tombstones may fill before a rebuild.
MAX_LOAD = 0.5
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIN_BITS = 10


def _bits_for(keys: int) -> int:
    """log2 of the table size for ``keys`` keys: at most 3/4 of MAX_LOAD full, so rebuilds stay rare."""
    bits = _MIN_BITS
    while keys > 0.75 * MAX_LOAD * (1 << bits):
        bits += 1
    return bits


class KeyIndex:
    """int64 key -> int64 row. ``capacity``: keys expected at most (the table starts at 2x that, grows if needed)."""

    def __init__(self, capacity: int = 1024):
        self._bits = _bits_for(int(capacity))
        self.clear()

    # ------------------------------------------------------------------ state
    def clear(self) -> None:
        """Remove every key (the table keeps its size)."""
        size = 1 << self._bits
        self._keys = np.full(size, EMPTY, np.int64)
        self._rows = np.full(size, EMPTY, np.int64)
        self._live = 0
        self._tombs = 0

    def __len__(self) -> int:
        return self._live

    @property
    def table_size(self) -> int:
        """Slots in the table (a power of two)."""
        return len(self._keys)

    @property
    def nbytes(self) -> int:
        """Bytes of the table's two arrays."""
        return int(self._keys.nbytes + self._rows.nbytes)

    def _slots(self, keys: np.ndarray) -> np.ndarray:
        """(N,) int64 home slots of non-negative int64 keys."""
        h = keys.astype(np.uint64) * _GOLDEN  # wraps mod 2^64, as Fibonacci hashing wants
        return (h >> np.uint64(64 - self._bits)).astype(np.int64)

    def _find_slots(self, keys: np.ndarray) -> np.ndarray:
        """(N,) the slot holding each key, -1 where the key is absent."""
        n = len(keys)
        found = np.full(n, -1, np.int64)
        if n == 0 or self._live == 0:
            return found
        mask = self.table_size - 1
        slots = self._slots(keys)
        pending = np.arange(n)
        while len(pending):
            s = slots[pending]
            tk = self._keys[s]
            hit = tk == keys[pending]
            found[pending[hit]] = s[hit]
            go_on = ~hit & (tk != EMPTY)  # tombstones and other keys: probe the next slot
            pending = pending[go_on]
            slots[pending] = (s[go_on] + 1) & mask
        return found

    # ------------------------------------------------------------------ queries
    def lookup(self, keys: np.ndarray) -> np.ndarray:
        """(N,) int64 row of each key, -1 where absent. keys: (N,) int64 >= 0."""
        keys = np.asarray(keys, np.int64)
        slots = self._find_slots(keys)
        rows = np.full(len(keys), -1, np.int64)
        ok = slots >= 0
        rows[ok] = self._rows[slots[ok]]
        return rows

    def items(self) -> tuple[np.ndarray, np.ndarray]:
        """(keys (V,), rows (V,)) of every live key, in table order."""
        occupied = self._keys >= 0
        return self._keys[occupied], self._rows[occupied]

    # ------------------------------------------------------------------ updates
    def insert(self, keys: np.ndarray, rows: np.ndarray) -> None:
        """Add keys (N,) int64 >= 0 with their rows (N,) int64. The keys must be distinct and absent."""
        keys = np.asarray(keys, np.int64)
        rows = np.asarray(rows, np.int64)
        if len(keys) == 0:
            return
        if (self._live + self._tombs + len(keys)) > MAX_LOAD * self.table_size:
            self._rebuild(self._live + len(keys))
        mask = self.table_size - 1
        slots = self._slots(keys)
        pending = np.arange(len(keys))
        while len(pending):
            s = slots[pending]
            tk = self._keys[s]
            free = tk < 0  # empty or a tombstone: the keys are known absent, so either can take them
            cand, cs = pending[free], s[free]
            self._keys[cs] = keys[cand]  # keys that share a free slot: one of them lands there ...
            won = self._keys[cs] == keys[cand]  # ... and reading back tells which
            self._rows[cs[won]] = rows[cand[won]]
            self._tombs -= int((tk[free][won] == TOMBSTONE).sum())
            placed = np.zeros(len(pending), bool)
            placed[np.flatnonzero(free)[won]] = True
            pending = pending[~placed]
            slots[pending] = (s[~placed] + 1) & mask
        self._live += len(keys)

    def remove(self, keys: np.ndarray) -> int:
        """Remove the keys that are present (N,) int64; returns how many were."""
        slots = self._find_slots(np.asarray(keys, np.int64))
        slots = slots[slots >= 0]
        self._keys[slots] = TOMBSTONE
        self._rows[slots] = EMPTY
        self._live -= len(slots)
        self._tombs += len(slots)
        return int(len(slots))

    def _rebuild(self, need: int) -> None:
        """Re-insert the live keys into a fresh table with room for ``need`` keys (drops tombstones)."""
        keys, rows = self.items()
        self._bits = max(self._bits, _bits_for(need))
        self.clear()
        if len(keys):
            self.insert(keys, rows)
