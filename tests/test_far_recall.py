"""tfm_rs.tasks.far_recall: batches are reproducible, the label is computable from the input, the
pairs lie beyond a window's reach, and bad arguments raise."""

import numpy as np
import pytest

from tfm_rs.tasks import FarRecallTask
from tfm_rs.tasks.far_recall import CLS


@pytest.mark.parametrize("keys", [1, 3])
def test_batches_are_reproducible_and_splits_differ(keys):
    task = FarRecallTask(length=300, num_keys=keys, seed=5)
    a, la = task.batch(7, index=2)
    b, lb = FarRecallTask(length=300, num_keys=keys, seed=5).batch(7, index=2)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(la, lb)
    assert not np.array_equal(a, task.batch(7, index=3)[0])
    assert not np.array_equal(a, task.batch(7, index=2, split="test")[0])
    assert not np.array_equal(a, FarRecallTask(length=300, num_keys=keys, seed=6).batch(7, index=2)[0])


@pytest.mark.parametrize("length, keys, values, distance", [(3, 1, 2, 2), (17, 1, 8, None), (127, 4, 5, 100),
                                                             (2048, 2, 8, None)])
def test_the_label_is_computable_from_the_input(length, keys, values, distance):
    task = FarRecallTask(length=length, num_values=values, num_keys=keys, min_distance=distance, seed=1)
    ids, labels = task.batch(64, index=0)
    assert ids.shape == (64, length) and ids.dtype == np.int64 and labels.shape == (64,)
    np.testing.assert_array_equal(task.answer(ids), labels)
    assert ids.min() >= CLS and ids.max() < task.vocab_size
    assert np.all(ids[:, 0] == CLS) and np.all(np.isin(ids[:, 1], task.query_ids))
    # Every key once, and only in the far part; fillers everywhere else.
    pairs = np.isin(ids, task.pair_ids)
    assert np.all(pairs.sum(1) == keys) and not pairs[:, :task.min_distance].any()
    assert np.all(np.isin(ids[:, 2:][~pairs[:, 2:]], task.filler_ids))
    assert set(np.unique(labels)) <= set(range(values))


def test_labels_are_balanced_and_independent_of_the_near_part():
    task = FarRecallTask(length=64, num_values=4, num_keys=2, seed=0)
    ids, labels = task.batch(4000)
    counts = np.bincount(labels, minlength=4) / len(labels)
    assert np.all(np.abs(counts - 0.25) < 0.03)
    # The near part (CLS, query, fillers) says nothing about the label: the same rate per query.
    for q in task.query_ids:
        rows = ids[:, 1] == q
        assert np.all(np.abs(np.bincount(labels[rows], minlength=4) / rows.sum() - 0.25) < 0.05)


def test_window_reach():
    task = FarRecallTask(length=2048)
    assert task.min_distance == 1024 and task.chance == 1 / 8
    assert not task.window_can_reach(right=64, num_layers=2)
    assert task.window_can_reach(right=512, num_layers=2)


def test_answer_reads_the_rule_not_the_generator():
    task = FarRecallTask(length=10, num_values=3, num_keys=2, min_distance=5)
    f = int(task.filler_ids[0])
    ids = np.array([[CLS, task.query_ids[1], f, f, f, task.pair_ids[1, 2], f, task.pair_ids[0, 0], f, f]])
    assert task.answer(ids).tolist() == [2]


@pytest.mark.parametrize("kwargs, error", [
    (dict(length=2), ValueError), (dict(num_values=1), ValueError), (dict(num_keys=0), ValueError),
    (dict(num_fillers=0), ValueError), (dict(min_distance=1), ValueError),
    (dict(length=10, num_keys=3, min_distance=8), ValueError), (dict(length=2.5), TypeError),
    (dict(num_keys=True), TypeError)])
def test_bad_arguments_raise(kwargs, error):
    with pytest.raises(error, match="FarRecallTask"):
        FarRecallTask(**kwargs)


def test_bad_calls_raise():
    task = FarRecallTask(length=16, num_keys=2)
    with pytest.raises(ValueError, match="split"):
        task.batch(2, split="valid")
    with pytest.raises(ValueError, match="size"):
        task.batch(0)
    with pytest.raises(ValueError, match="index"):
        task.batch(2, index=-1)
    ids, _ = task.batch(2)
    with pytest.raises(ValueError, match="shape"):
        task.answer(ids[:, :8])
    bad = ids.copy()
    bad[:, 1] = task.filler_ids[0]
    with pytest.raises(ValueError, match="query"):
        task.answer(bad)
    bad = ids.copy()
    bad[np.isin(bad, task.pair_ids)] = task.filler_ids[0]
    with pytest.raises(ValueError, match="exactly one"):
        task.answer(bad)
    with pytest.raises(ValueError, match="right"):
        task.window_can_reach(-1, 2)
