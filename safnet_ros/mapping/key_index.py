"""A vectorised hash index from int64 voxel keys to int64 rows (open addressing, linear probing).

The semantic map looks up every voxel of a cloud (~25k keys) in an index of up to
``max_voxels`` keys once per cloud: this table does O(cloud) work per lookup,
insert and removal (a sorted index pays O(V) whenever new keys join it), with numpy
operations over the whole batch of keys and no per-key Python loop.

Layout: ``_keys`` (S,) int64 and ``_rows`` (S,) int64, S a power of two kept at
least twice the number of occupied slots. Keys must be >= 0; :data:`EMPTY` (-1)
marks a free slot and :data:`TOMBSTONE` (-2) a removed key, which lookups probe
past and inserts reuse. When live keys plus tombstones pass :data:`MAX_LOAD` of
the table it is rebuilt (grown when the live keys need it, and doubled once when
tombstones filled it within :data:`CHURN_INSERTS` inserts: a full map that evicts
and inserts 40 % of itself every cloud would otherwise rebuild every few clouds).
Rows are the map's row numbers (distinct, >= 0): the index remembers the slot of
each row, so that :meth:`KeyIndex.remove_rows` frees slots without probing.

Hash: Fibonacci hashing (the key times 2^64 / phi, top bits), which spreads the
map's spatially coherent keys evenly. A lookup also returns, for each absent key,
the first free slot of its probe sequence, where :meth:`KeyIndex.insert` can put
it without probing again.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import numpy as np

EMPTY = -1
TOMBSTONE = -2
#: Largest share of the table's slots that live keys and tombstones may fill before a rebuild.
MAX_LOAD = 0.5
#: A rebuild forced by tombstones within this many inserts of the previous one doubles the table ...
CHURN_INSERTS = 8
#: ... at most this many times beyond the size its capacity asked for.
CHURN_GROWTH = 1
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
        self._base_bits = self._bits
        self._slot_of_row = np.full(max(int(capacity), 16), EMPTY, np.int64)
        self.clear()

    # ------------------------------------------------------------------ state
    def clear(self) -> None:
        """Remove every key (the table keeps its size)."""
        size = 1 << self._bits
        self._keys = np.full(size, EMPTY, np.int64)
        self._rows = np.full(size, EMPTY, np.int64)
        self._slot_of_row.fill(EMPTY)
        self._live = 0
        self._tombs = 0
        self._inserts_since_rebuild = 0
        self._generation = getattr(self, "_generation", 0) + 1  # free-slot hints are valid within one

    def __len__(self) -> int:
        return self._live

    @property
    def table_size(self) -> int:
        """Slots in the table (a power of two)."""
        return len(self._keys)

    @property
    def nbytes(self) -> int:
        """Bytes of the table's arrays and the row -> slot array."""
        return int(self._keys.nbytes + self._rows.nbytes + self._slot_of_row.nbytes)

    def _slots(self, keys: np.ndarray) -> np.ndarray:
        """(N,) int64 home slots of non-negative int64 keys."""
        h = keys.astype(np.uint64) * _GOLDEN  # wraps mod 2^64, as Fibonacci hashing wants
        return (h >> np.uint64(64 - self._bits)).astype(np.int64)

    def _probe(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(found (N,), free (N,)): the slot holding each key or -1; for an absent key the first free
        slot of its probe sequence (a tombstone before the empty slot that ended it, else that empty
        slot), where it can be inserted; -1 for present keys."""
        n = len(keys)
        found = np.full(n, -1, np.int64)
        free = np.full(n, -1, np.int64)
        if n == 0:
            return found, free
        mask = self.table_size - 1
        slots = self._slots(keys)
        pending = np.arange(n)
        pending_keys = keys
        first_tomb = np.full(n, -1, np.int64)  # per pending key: the first tombstone met so far
        while len(pending):
            tk = np.take(self._keys, slots)
            got = np.flatnonzero(tk == pending_keys)  # (index arrays: boolean-mask indexing costs 3-4x more)
            found[np.take(pending, got)] = np.take(slots, got)
            empty = np.flatnonzero(tk == EMPTY)
            if len(empty):
                tomb_before = np.take(first_tomb, empty)
                free[np.take(pending, empty)] = np.where(tomb_before >= 0, tomb_before, np.take(slots, empty))
            if self._tombs:
                tomb = np.flatnonzero((tk == TOMBSTONE) & (first_tomb < 0))
                first_tomb[tomb] = np.take(slots, tomb)
            go_on = (tk != pending_keys) & (tk != EMPTY)  # tombstones and other keys: probe the next slot
            pending = np.compress(go_on, pending)
            pending_keys = np.compress(go_on, pending_keys)
            first_tomb = np.compress(go_on, first_tomb)
            slots = (np.compress(go_on, slots) + 1) & mask
        return found, free

    # ------------------------------------------------------------------ queries
    def lookup_with_hints(self, keys: np.ndarray) -> tuple[np.ndarray, "InsertHints"]:
        """Of keys (N,) int64 >= 0: (rows (N,) int64, -1 where absent; hints to :meth:`insert` those)."""
        keys = np.asarray(keys, np.int64)
        if self._live == 0 and self._tombs == 0:
            return np.full(len(keys), -1, np.int64), InsertHints(self._generation, self._slots(keys))
        slots, free = self._probe(keys)
        rows = np.full(len(keys), -1, np.int64)
        ok = np.flatnonzero(slots >= 0)
        rows[ok] = np.take(self._rows, slots[ok])
        return rows, InsertHints(self._generation, free)

    def items(self) -> tuple[np.ndarray, np.ndarray]:
        """(keys (V,), rows (V,)) of every live key, in table order."""
        occupied = self._keys >= 0
        return self._keys[occupied], self._rows[occupied]

    # ------------------------------------------------------------------ updates
    def insert(self, keys: np.ndarray, rows: np.ndarray, hints: Optional[np.ndarray] = None,
               generation: Optional[int] = None) -> None:
        """Add keys (N,) int64 >= 0 with their rows (N,) int64 >= 0. The keys must be distinct and absent.

        hints (N,): where each key's probe may start (the first free slot of the
        key's probe in :meth:`lookup_with_hints`, taken from ``InsertHints.select``); they are
        used only if the table was not rebuilt or cleared since (``generation``).
        Removals in between do not invalidate them: they only add tombstones.
        """
        keys = np.asarray(keys, np.int64)
        rows = np.asarray(rows, np.int64)
        if len(keys) == 0:
            return
        if rows.min() < 0:
            raise ValueError("KeyIndex rows must be >= 0")
        if (self._live + self._tombs + len(keys)) > MAX_LOAD * self.table_size:
            self._rebuild(self._live + len(keys))
        self._inserts_since_rebuild += 1
        if hints is None or generation != self._generation:
            slots = self._slots(keys)
        else:
            slots = np.array(hints, np.int64)
        self._ensure_rows(int(rows.max()) + 1)  # rows are row numbers: the row -> slot array is as long as the largest
        mask = self.table_size - 1
        pending = np.arange(len(keys))
        while len(pending):
            s = np.take(slots, pending)
            tk = np.take(self._keys, s)
            free = np.flatnonzero(tk < 0)  # empty or a tombstone: the keys are known absent, so either can take them
            cand, cs = np.take(pending, free), np.take(s, free)
            cand_keys = np.take(keys, cand)
            self._keys[cs] = cand_keys  # keys that share a free slot: one of them lands there ...
            won = np.flatnonzero(np.take(self._keys, cs) == cand_keys)  # ... and reading back tells which
            won_slots, won_rows = np.take(cs, won), np.take(rows, np.take(cand, won))
            self._rows[won_slots] = won_rows
            self._slot_of_row[won_rows] = won_slots
            placed_at = np.take(free, won)  # positions in pending
            if self._tombs:
                self._tombs -= int(np.count_nonzero(np.take(tk, placed_at) == TOMBSTONE))
            left = np.ones(len(pending), bool)
            left[placed_at] = False
            pending = np.compress(left, pending)
            slots[pending] = (np.compress(left, s) + 1) & mask
        self._live += len(keys)

    def remove_rows(self, rows: np.ndarray) -> int:
        """Remove the keys stored with these distinct rows (N,) int64, by the remembered slot of each row: no probing.

        Rows that no live key has are skipped; returns how many keys were removed.
        """
        rows = np.asarray(rows, np.int64)
        rows = rows[(rows >= 0) & (rows < len(self._slot_of_row))]
        slots = np.take(self._slot_of_row, rows)
        ok = slots >= 0
        slots, rows = slots[ok], rows[ok]
        slots = slots[np.take(self._rows, slots) == rows]  # the slot still holds that row
        self._slot_of_row[np.take(self._rows, slots)] = EMPTY
        self._keys[slots] = TOMBSTONE
        self._rows[slots] = EMPTY
        self._live -= len(slots)
        self._tombs += len(slots)
        return int(len(slots))

    def _ensure_rows(self, rows: int) -> None:
        """Room in the row -> slot array for rows 0..rows-1."""
        if rows > len(self._slot_of_row):
            grown = np.full(max(rows, 2 * len(self._slot_of_row)), EMPTY, np.int64)
            grown[: len(self._slot_of_row)] = self._slot_of_row
            self._slot_of_row = grown

    def _rebuild(self, need: int) -> None:
        """Re-insert the live keys into a fresh table with room for ``need`` keys (drops tombstones;
        doubles a table that churned, see the module docstring)."""
        keys, rows = self.items()
        bits = max(self._bits, _bits_for(need))
        if (self._inserts_since_rebuild < CHURN_INSERTS and bits == self._bits
                and bits < self._base_bits + CHURN_GROWTH):
            bits += 1
        self._bits = bits
        self.clear()
        if len(keys):
            self.insert(keys, rows)


class InsertHints(NamedTuple):
    """The first free slot of each looked-up key's probe sequence, valid for one table generation."""

    generation: int
    slots: np.ndarray  # (N,) int64, -1 for keys that were present

    def select(self, which: np.ndarray) -> tuple[np.ndarray, int]:
        """(hints of the keys at positions ``which``, generation) for :meth:`KeyIndex.insert`."""
        return np.take(self.slots, which), self.generation
