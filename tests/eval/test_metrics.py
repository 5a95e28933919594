"""Many / Medium / Few grouping and the metric definitions."""

from __future__ import annotations

import numpy as np
import pytest

from sdclr.eval.metrics import class_groups, per_class_accuracy, summarize


def test_cifar10_thirds_are_3_3_4_by_d_i_count():
    counts = [348, 969, 125, 208, 1617, 75, 4500, 581, 2697, 45]  # split 1's D_i
    g = class_groups(counts)
    assert g["few"] == [2, 5, 9] and g["medium"] == [0, 3, 7] and g["many"] == [1, 4, 6, 8]


def test_cifar100_thirds_are_33_33_34():
    g = class_groups(np.arange(100)[::-1] + 4)
    assert [len(g[k]) for k in ("many", "medium", "few")] == [34, 33, 33]
    assert g["few"] == list(range(67, 100))


def test_thresholds_for_imagenet_style_groups():
    g = class_groups([1280, 101, 100, 20, 19, 5], scheme="thresholds")
    assert g == {"many": [0, 1], "medium": [2, 3], "few": [4, 5]}


def test_summary_values():
    target = np.repeat(np.arange(3), 4)
    pred = target.copy()
    pred[[0, 1, 4]] = 2  # class 0: 2/4 right, class 1: 3/4, class 2: 4/4
    groups = {"many": [0], "medium": [1], "few": [2]}
    s = summarize(pred, target, 3, groups)
    assert s["per_class"] == [50.0, 75.0, 100.0]
    assert s["acc"] == pytest.approx(100 * 9 / 12)
    assert (s["many"], s["medium"], s["few"]) == (50.0, 75.0, 100.0)
    assert s["std"] == pytest.approx(np.std([50, 75, 100]))  # population std
    assert np.isnan(per_class_accuracy(np.array([0]), np.array([0]), 2)[1])


def test_group_assignment_by_thresholds():
    g = class_groups([150, 101, 100, 20, 19, 5], "thresholds")
    assert g == {"many": [0, 1], "medium": [2, 3], "few": [4, 5]}
