import numpy as np
import pytest
from scipy.stats import ortho_group

from lightning_embproj.reduce.align import procrustes_align


def _orthogonal(k: int, seed: int, reflect: bool) -> np.ndarray:
    q = ortho_group.rvs(k, random_state=seed)
    if (np.linalg.det(q) < 0) != reflect:
        q[:, 0] *= -1
    return q


@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("reflect", [False, True])
def test_recovers_rotation_reflection_translation(k: int, reflect: bool) -> None:
    rng = np.random.default_rng(k)
    ref = rng.normal(size=(200, k)) * 10
    keys = rng.permutation(10_000)[:200].astype(np.int64)
    moved = ref @ _orthogonal(k, seed=k, reflect=reflect) + rng.normal(size=k) * 50
    out = procrustes_align(moved, keys, ref, keys)
    np.testing.assert_allclose(out, ref, atol=1e-8)


def test_partial_overlap_shuffled_order_moves_every_row() -> None:
    rng = np.random.default_rng(0)
    full = rng.normal(size=(300, 2))
    all_keys = np.arange(300, dtype=np.int64) * 7 + 3
    q, t = _orthogonal(2, seed=5, reflect=True), np.array([3.0, -4.0])
    # previous epoch: rows 0..199; this epoch: rows 100..299 in a shuffled order
    ref_idx = rng.permutation(200)
    cur_idx = rng.permutation(np.arange(100, 300))
    cur = full[cur_idx] @ q + t
    out = procrustes_align(cur, all_keys[cur_idx], full[ref_idx], all_keys[ref_idx])
    # the 100 rows new this epoch follow the same transform as the shared ones
    np.testing.assert_allclose(out, full[cur_idx], atol=1e-8)


def test_identical_input_comes_back_bit_exact() -> None:
    rng = np.random.default_rng(1)
    layout = rng.normal(size=(500, 2)) * 30 + 7
    keys = rng.permutation(500).astype(np.int64)
    out = procrustes_align(layout, keys, layout.copy(), keys.copy())
    assert np.array_equal(out, layout)
    assert out is not layout
    # same rows, reference in another order: still identical
    perm = rng.permutation(500)
    assert np.array_equal(procrustes_align(layout, keys, layout[perm], keys[perm]), layout)


def test_no_scaling() -> None:
    rng = np.random.default_rng(2)
    ref = rng.normal(size=(50, 2))
    keys = np.arange(50)
    out = procrustes_align(3 * ref, keys, ref, keys)
    assert np.linalg.norm(out - out.mean(0)) == pytest.approx(3 * np.linalg.norm(ref - ref.mean(0)))


def test_too_few_shared_rows_returns_layout_unchanged() -> None:
    layout = np.arange(10.0).reshape(5, 2)
    out = procrustes_align(layout, np.arange(5), -layout[:3], np.array([0, 1, 99]))
    assert np.array_equal(out, layout)


def test_bad_shapes_raise() -> None:
    with pytest.raises(ValueError, match="keys"):
        procrustes_align(np.zeros((4, 2)), np.arange(3), np.zeros((4, 2)), np.arange(4))
    with pytest.raises(ValueError, match="components"):
        procrustes_align(np.zeros((4, 2)), np.arange(4), np.zeros((4, 3)), np.arange(4))


def _hand_svd_align(layout: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """The previous hand-written fit (rows matched): numpy SVD of the cross-covariance."""
    mu_a, mu_b = layout.mean(axis=0), ref.mean(axis=0)
    u, _, vt = np.linalg.svd((layout - mu_a).T @ (ref - mu_b))
    return (layout - mu_a) @ (u @ vt) + mu_b


@pytest.mark.parametrize("k", [2, 3])
def test_same_result_as_the_hand_written_svd(k: int) -> None:
    rng = np.random.default_rng(10 + k)
    ref = rng.normal(size=(400, k)) * 5
    noisy = ref @ _orthogonal(k, seed=k + 3, reflect=k == 3) + rng.normal(size=(400, k)) + 2.0
    keys = np.arange(400)
    out = procrustes_align(noisy, keys, ref, keys)
    np.testing.assert_allclose(out, _hand_svd_align(noisy, ref), atol=1e-10)
    # a rigid motion: distances between rows are kept (no scaling)
    np.testing.assert_allclose(
        np.linalg.norm(out[1:] - out[:-1], axis=1), np.linalg.norm(noisy[1:] - noisy[:-1], axis=1)
    )


def test_non_finite_layout_raises() -> None:
    layout = np.random.default_rng(4).normal(size=(10, 2))
    layout[3, 1] = np.nan
    with pytest.raises(ValueError, match="layout contains NaN"):
        procrustes_align(layout, np.arange(10), np.ones((10, 2)), np.arange(10))
