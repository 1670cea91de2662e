"""The semantic map's hash index (safnet_ros.mapping.key_index) against a Python dict."""
import numpy as np
import pytest

from safnet_ros.mapping.key_index import MAX_LOAD, KeyIndex


def test_lookups_inserts_and_removals_match_a_dict():
    """200 rounds of lookups, inserts and removals (tombstones, their reuse and rebuilds) agree with a dict."""
    rng = np.random.default_rng(0)
    index = KeyIndex(capacity=256)  # small on purpose: the table has to grow and rebuild
    reference: dict[int, int] = {}
    for _ in range(200):
        keys = np.unique(rng.integers(0, 5000, 300))
        rows = index.lookup(keys)
        expected = np.array([reference.get(int(k), -1) for k in keys])
        np.testing.assert_array_equal(rows, expected)
        new = keys[rows < 0]
        new_rows = rng.integers(0, 10**6, len(new))
        index.insert(new, new_rows)
        reference.update(zip(new.tolist(), new_rows.tolist()))
        gone = rng.choice(keys, len(keys) // 3, replace=False)
        assert index.remove(gone) == sum(int(k) in reference for k in gone)
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
    np.testing.assert_array_equal(index.lookup(same), same * 10)
    assert index.table_size == size


def test_a_table_sized_for_its_capacity_never_rebuilds_while_filling():
    index = KeyIndex(capacity=50_000)
    size = index.table_size
    keys = np.random.default_rng(1).choice(2**40, 50_000, replace=False)
    for part in np.array_split(keys, 10):
        index.insert(part, part)
    assert index.table_size == size
    np.testing.assert_array_equal(index.lookup(keys), keys)
    assert (index.lookup(keys + 2**41) == -1).all()


def test_clear_forgets_every_key():
    index = KeyIndex()
    index.insert(np.array([3, 5, 7]), np.array([0, 1, 2]))
    index.clear()
    assert len(index) == 0
    assert (index.lookup(np.array([3, 5, 7])) == -1).all()


@pytest.mark.parametrize("capacity", [0, 1, 1000, 500_000])
def test_table_size_is_a_power_of_two_with_room(capacity):
    index = KeyIndex(capacity)
    size = index.table_size
    assert size & (size - 1) == 0
    assert capacity <= MAX_LOAD * size
