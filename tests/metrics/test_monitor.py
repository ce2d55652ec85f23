"""The training thread's metrics (torch) equal the background pipeline's (numpy)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lightning_embproj.metrics.health import rankme, uniformity
from lightning_embproj.metrics.monitor import MONITOR_METRICS, monitor_metrics
from lightning_embproj.metrics.scores import knn_accuracy, silhouette


def clusters(n: int, d: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n)
    X = rng.normal(size=(n, d)) + 1.5 * rng.normal(size=(10, d))[y]
    return X.astype(np.float32), y


def reference(X: np.ndarray, y: np.ndarray) -> dict[str, float]:
    return {"knn_accuracy": knn_accuracy(X, y), "silhouette": silhouette(X, y),
            "rankme": rankme(X), "uniformity": uniformity(X)}


@pytest.mark.parametrize(("n", "d"), [(300, 16), (2100, 8), (50, 300)])
def test_values_match_the_numpy_metrics(n, d):
    # 2100 rows: uniformity on the fixed 2,048-row subset, as the background does
    X, y = clusters(n, d)
    got = monitor_metrics(torch.from_numpy(X), MONITOR_METRICS, torch.from_numpy(y))
    want = reference(X, y)
    assert list(got) == list(MONITOR_METRICS)
    for name in MONITOR_METRICS:
        assert got[name] == pytest.approx(want[name], rel=1e-5, abs=1e-6), name


def test_string_labels_and_float16_input():
    X, y = clusters(200, 12)
    names = np.array([f"digit {v}" for v in y])
    got = monitor_metrics(torch.from_numpy(X).half(), ["knn_accuracy", "silhouette"], names)
    X16 = X.astype(np.float16).astype(np.float32)
    assert got["knn_accuracy"] == pytest.approx(knn_accuracy(X16, names))
    assert got["silhouette"] == pytest.approx(silhouette(X16, names), rel=1e-5)


def test_undefined_values_are_nan_like_the_background():
    one_class = monitor_metrics(torch.randn(20, 4), ["silhouette", "knn_accuracy"],
                                torch.zeros(20, dtype=torch.long))
    assert math.isnan(one_class["silhouette"]) and one_class["knn_accuracy"] == 1.0
    single = monitor_metrics(torch.randn(1, 4), MONITOR_METRICS, torch.zeros(1))
    assert all(math.isnan(single[m]) for m in ("knn_accuracy", "silhouette", "uniformity"))
    assert monitor_metrics(torch.zeros(5, 3), ["rankme"])["rankme"] != monitor_metrics(
        torch.zeros(5, 3), ["rankme"])["rankme"]  # NaN for an all-zero matrix


def test_collapse_lowers_rankme_and_raises_uniformity():
    X = torch.randn(500, 32, generator=torch.Generator().manual_seed(0))
    collapsed = X[:, :1] @ torch.ones(1, 32) + 0.01 * X
    a, b = monitor_metrics(X, ["rankme", "uniformity"]), monitor_metrics(
        collapsed, ["rankme", "uniformity"])
    assert b["rankme"] < 3 < a["rankme"]
    assert b["uniformity"] > a["uniformity"]


def test_bad_calls_are_refused():
    with pytest.raises(ValueError, match="unknown monitor metrics"):
        monitor_metrics(torch.zeros(3, 2), ["drift/knn_overlap"])
    with pytest.raises(ValueError, match="need labels"):
        monitor_metrics(torch.zeros(3, 2), ["knn_accuracy"])
    with pytest.raises(ValueError, match=r"2-D"):
        monitor_metrics(torch.zeros(3), ["rankme"])


@pytest.mark.parametrize(("n", "zero_rows"), [(1500, 0), (1500, 7), (2100, 0), (2100, 7)])
def test_uniformity_alone_reads_half_the_gram_and_matches(n, zero_rows):
    # alone, uniformity takes only the columns from each block's first row on (several blocks
    # at these sizes); 2100 rows: the fixed 2,048-row subset; zero rows: the slower branch
    X, _ = clusters(n, 6, seed=1)
    X[np.random.default_rng(2).choice(n, zero_rows, replace=False)] = 0.0
    got = monitor_metrics(torch.from_numpy(X), ["uniformity"])["uniformity"]
    with_rows = monitor_metrics(torch.from_numpy(X), ["uniformity", "knn_accuracy"],
                                torch.zeros(n, dtype=torch.long))["uniformity"]
    assert got == pytest.approx(uniformity(X), rel=1e-5)
    assert with_rows == pytest.approx(got, rel=1e-6)
