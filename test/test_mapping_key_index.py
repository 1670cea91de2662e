"""The semantic map's hash index (safnet_ros.mapping.key_index) against a Python dict."""
import numpy as np
import pytest

from safnet_ros.mapping.key_index import MAX_LOAD, KeyIndex


def lookup(index: KeyIndex, keys: np.ndarray) -> np.ndarray:
    """(N,) row of each key, -1 where absent."""
    return index.lookup_with_hints(keys)[0]


def test_lookups_inserts_and_removals_match_a_dict():
    """200 rounds of lookups, inserts and removals (tombstones, their reuse and rebuilds) agree with a dict."""
    rng = np.random.default_rng(0)
    index = KeyIndex(capacity=256)  # small on purpose: the table has to grow and rebuild
    reference: dict[int, int] = {}
    next_row = 0
    for _ in range(200):
        keys = np.unique(rng.integers(0, 5000, 300))
        rows = lookup(index, keys)
        expected = np.array([reference.get(int(k), -1) for k in keys])
        np.testing.assert_array_equal(rows, expected)
        new = keys[rows < 0]
        new_rows = rng.permutation(np.arange(next_row, next_row + len(new)))  # distinct row numbers
        next_row += len(new)
        index.insert(new, new_rows)
        reference.update(zip(new.tolist(), new_rows.tolist()))
        gone = rng.choice(keys, len(keys) // 3, replace=False)
        gone_rows = lookup(index, gone)
        assert index.remove_rows(gone_rows[gone_rows >= 0]) == sum(int(k) in reference for k in gone)
        for k in gone.tolist():
            reference.pop(k, None)
        assert len(index) == len(reference)
        assert len(index) <= MAX_LOAD * index.table_size
    keys, rows = index.items()
    assert dict(zip(keys.tolist(), rows.tolist())) == reference


def test_keys_that_share_a_home_slot_all_land():
    """Keys hashing to the same slot in one insert batch are all placed (one wins, the rest probe on)."""
    index = KeyIndex(capacity=16)
    size = index.table_size
    home = index._slots(np.arange(0, 200_000, dtype=np.int64))
    same = np.flatnonzero(home == home[0])[:8]  # 8 keys with one home slot
    assert len(same) >= 4
    index.insert(same, same * 10)
    np.testing.assert_array_equal(lookup(index, same), same * 10)
    assert index.table_size == size


def test_a_table_sized_for_its_capacity_never_rebuilds_while_filling():
    index = KeyIndex(capacity=50_000)
    size = index.table_size
    keys = np.random.default_rng(1).choice(2**40, 50_000, replace=False)
    rows = np.arange(len(keys))
    for part, part_rows in zip(np.array_split(keys, 10), np.array_split(rows, 10)):
        index.insert(part, part_rows)
    assert index.table_size == size
    np.testing.assert_array_equal(lookup(index, keys), rows)
    assert (lookup(index, keys + 2**41) == -1).all()


def test_clear_forgets_every_key():
    index = KeyIndex()
    index.insert(np.array([3, 5, 7]), np.array([0, 1, 2]))
    index.clear()
    assert len(index) == 0
    assert (lookup(index, np.array([3, 5, 7])) == -1).all()


@pytest.mark.parametrize("capacity", [0, 1, 1000, 500_000])
def test_table_size_is_a_power_of_two_with_room(capacity):
    index = KeyIndex(capacity)
    size = index.table_size
    assert size & (size - 1) == 0
    assert capacity <= MAX_LOAD * size


def test_hinted_inserts_and_removal_by_row_match_a_dict():
    """The map's path: lookup with hints, remove some keys by their rows, insert the absent keys at the hints."""
    rng = np.random.default_rng(2)
    index = KeyIndex(capacity=512)
    reference: dict[int, int] = {}
    next_row = 0
    free_rows: list[int] = []
    for _ in range(150):
        keys = np.unique(rng.integers(0, 4000, 400))
        rows, hints = index.lookup_with_hints(keys)
        np.testing.assert_array_equal(rows, [reference.get(int(k), -1) for k in keys])
        # remove a third of the live keys that this batch does not hold, by row (as an eviction does)
        mine = set(keys.tolist())
        others = [k for k in reference if k not in mine]
        gone = rng.choice(others, len(others) // 3, replace=False) if others else np.empty(0, np.int64)
        gone_rows = np.array([reference[int(k)] for k in gone], np.int64)
        assert index.remove_rows(gone_rows) == len(gone)
        for k, r in zip(gone.tolist(), gone_rows.tolist()):
            del reference[k]
            free_rows.append(r)
        new = np.flatnonzero(rows < 0)
        new_rows = []
        for _ in new:
            new_rows.append(free_rows.pop() if free_rows else next_row)
            if not free_rows and new_rows[-1] == next_row:
                next_row += 1
        index.insert(keys[new], np.array(new_rows, np.int64), *hints.select(new))
        reference.update(zip(keys[new].tolist(), new_rows))
        assert len(index) == len(reference)
    keys, rows = index.items()
    assert dict(zip(keys.tolist(), rows.tolist())) == reference
    # a row that no key holds (any more) is skipped
    assert index.remove_rows(np.array([10**6, -1], np.int64)) == 0


def test_hints_from_before_a_rebuild_are_not_used():
    """A rebuild (or clear) between lookup and insert moves every slot: the stale hints are ignored."""
    index = KeyIndex(capacity=16)
    keys = np.arange(100, 140, dtype=np.int64)
    index.insert(keys[:8], np.arange(8))
    rows, hints = index.lookup_with_hints(keys[8:])
    assert (rows == -1).all()
    index.insert(np.arange(1000, 1300, dtype=np.int64), np.arange(100, 400))  # forces a grow + rebuild
    index.insert(keys[8:], np.arange(8, 40), *hints.select(np.arange(32)))
    np.testing.assert_array_equal(lookup(index, keys), np.arange(40))


def test_negative_rows_are_refused():
    with pytest.raises(ValueError, match="rows must be >= 0"):
        KeyIndex().insert(np.array([1]), np.array([-3]))


def test_a_churning_table_doubles_once_and_no_more():
    """Remove and insert a large share every round (a full map evicting): rebuilds come too soon after
    each other, so the table doubles once (CHURN_GROWTH) and then stays that size."""
    from safnet_ros.mapping.key_index import CHURN_GROWTH

    index = KeyIndex(capacity=4000)
    base = index.table_size
    rng = np.random.default_rng(3)
    live = rng.choice(2**40, 4000, replace=False)
    rows = np.arange(4000)
    index.insert(live, rows)
    sizes = []
    for _ in range(60):
        gone = rng.choice(len(live), 1600, replace=False)  # 40 % of the keys out ...
        index.remove_rows(rows[gone])
        fresh = rng.choice(2**40, 1600, replace=False) + 2**41  # ... and as many new ones in, on the same rows
        found, hints = index.lookup_with_hints(fresh)
        assert (found == -1).all()
        index.insert(fresh, rows[gone], *hints.select(np.arange(len(fresh))))
        live[gone] = fresh
        sizes.append(index.table_size)
    assert max(sizes) == base * 2 ** CHURN_GROWTH
    np.testing.assert_array_equal(lookup(index, live), rows)
    assert len(index) == 4000
