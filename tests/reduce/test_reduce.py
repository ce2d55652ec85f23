import sys

import numpy as np
import pytest
from layouts import disparity
from sklearn.datasets import load_digits
from sklearn.decomposition import PCA
from sklearn.neighbors import NearestNeighbors

from lightning_embproj.reduce import dispatch as R
from lightning_embproj.reduce import pca as P
from lightning_embproj.reduce import tsne as T


def knn_accuracy(Y: np.ndarray, y: np.ndarray, k: int = 10) -> float:
    """Leave-one-out k-NN majority-vote accuracy of labels ``y`` in layout ``Y``."""
    idx = NearestNeighbors(n_neighbors=k + 1).fit(Y).kneighbors(return_distance=False)[:, 1:]
    votes = np.array([np.bincount(row, minlength=y.max() + 1).argmax() for row in y[idx]])
    return float((votes == y).mean())


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    X, y = load_digits(return_X_y=True)
    return X[:500], y[:500]


@pytest.fixture(scope="module")
def digits_tsne(digits: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    return R.tsne(digits[0], 2)


# --- dispatch ---------------------------------------------------------------------------------

def test_unknown_reducer_names_the_allowed_ones() -> None:
    with pytest.raises(ValueError, match=r"one of \['pca', 'tsne', 'umap'\], got 'tnse'"):
        R.reduce("tnse", np.zeros((10, 3)), 2)


def test_reduce_dispatches_and_returns_float64(digits: tuple[np.ndarray, np.ndarray]) -> None:
    X = digits[0][:100].astype(np.float32)
    out = R.reduce("pca", X, 2)
    assert out.dtype == np.float64 and out.shape == (100, 2)
    # reduce() caps BLAS threads; some OpenBLAS builds (numpy 1.24's) then sum in another order
    np.testing.assert_allclose(out, R.pca(X, 2), rtol=1e-12, atol=1e-12)


def test_bad_input_raises() -> None:
    with pytest.raises(ValueError, match="2-D"):
        R.pca(np.zeros(5), 2)
    with pytest.raises(ValueError, match="n_components"):
        R.pca(np.zeros((5, 3)), 0)
    with pytest.raises(ValueError, match="NaN"):
        R.tsne(np.full((5, 3), np.nan), 2)
    with pytest.raises(ValueError, match=r"init must have shape \(20, 2\)"):
        R.tsne(np.random.default_rng(0).normal(size=(20, 3)), 2, init=np.zeros((19, 2)))


# --- pca --------------------------------------------------------------------------------------

def test_pca_matches_sklearn_up_to_sign(digits: tuple[np.ndarray, np.ndarray]) -> None:
    X = digits[0]
    ours = R.pca(X, 3)
    ref = PCA(3).fit_transform(X)
    np.testing.assert_allclose(np.abs(ours), np.abs(ref), atol=1e-8)


def test_pca_identical_input_gives_identical_output(digits: tuple[np.ndarray, np.ndarray]) -> None:
    X = digits[0]
    np.testing.assert_array_equal(R.pca(X, 2), R.pca(X.copy(), 2))


def test_pca_sign_is_fixed_by_the_largest_loading() -> None:
    rng = np.random.default_rng(0)
    # variance mostly along +feature 2, then feature 0
    X = rng.normal(size=(300, 4)) * [2.0, 0.1, 5.0, 0.1]
    for data in (X, -X, X[::-1]):
        out = R.pca(data, 2)
        assert np.corrcoef(out[:, 0], data[:, 2])[0, 1] > 0.99
        assert np.corrcoef(out[:, 1], data[:, 0])[0, 1] > 0.99


def _old_exact_pca(X: np.ndarray, k: int) -> np.ndarray:
    """The previous exact path: full float64 centred copy, eigh of the D x D covariance."""
    Xc = np.asarray(X, dtype=np.float64) - np.asarray(X, dtype=np.float64).mean(axis=0)
    evals, evecs = np.linalg.eigh(Xc.T @ Xc)
    comps = evecs[:, ::-1][:, :k].T
    signs = np.sign(comps[np.arange(k), np.argmax(np.abs(comps), axis=1)])
    return Xc @ (comps * signs[:, None]).T


def _low_rank(n: int, d: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    latent = rng.normal(size=(n, 4)) * [10.0, 6.0, 3.0, 2.0]
    mix = np.linalg.qr(rng.normal(size=(d, 4)))[0].T
    return latent @ mix + 0.01 * rng.normal(size=(n, d)) + 3.0


@pytest.mark.parametrize(("n", "d", "solver"), [(120, 400, "gram"), (400, 120, "covariance")])
def test_pca_solver_by_shape_gives_the_old_layout(n: int, d: int, solver: str) -> None:
    X = np.random.default_rng(n).normal(size=(n, d)).astype(np.float32)
    assert P._pca_solver(n, d, 3, "auto") == solver
    old = _old_exact_pca(X, 3)
    np.testing.assert_allclose(R.pca(X, 3), old, atol=1e-9)
    # the other exact solver gives the same signed layout
    other: R.PCASolver = "covariance" if solver == "gram" else "gram"
    np.testing.assert_allclose(R.pca(X, 3, solver=other), old, atol=1e-9)


def test_pca_solver_choice_by_shape() -> None:
    # exact while the smaller side is at most 15 x the sketch width (k + 20)
    assert P._pca_solver(300, 4096, 2, "auto") == "gram"
    assert P._pca_solver(1000, 4096, 50, "auto") == "gram"
    assert P._pca_solver(2000, 4096, 50, "auto") == "randomized"
    assert P._pca_solver(20_000, 256, 2, "auto") == "covariance"
    assert P._pca_solver(20_000, 1024, 50, "auto") == "covariance"
    assert P._pca_solver(20_000, 1024, 2, "auto") == "randomized"
    assert P._pca_solver(20_000, 4096, 50, "auto") == "randomized"
    with pytest.raises(ValueError, match=r"solver must be one of .*'randomized'\], got 'svd'"):
        R.pca(np.zeros((5, 3)), 2, solver="svd")  # type: ignore[arg-type]


def test_reduce_limits_blas_threads_to_n_jobs(monkeypatch: pytest.MonkeyPatch) -> None:
    from threadpoolctl import threadpool_info

    def blas_threads() -> set[int]:
        return {lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"}

    np.linalg.qr(np.ones((3, 3)))  # BLAS loaded
    before = blas_threads()
    seen: list[set[int]] = []
    real = R.pca

    def recording(X: np.ndarray, n_components: int) -> np.ndarray:
        seen.append(blas_threads())
        return real(X, n_components)

    monkeypatch.setattr(R, "pca", recording)
    X = np.random.default_rng(0).normal(size=(40, 6))
    R.reduce("pca", X, 2)  # n_jobs=1 by default: one BLAS thread while it runs
    R.reduce("pca", X, 2, n_jobs=-1)  # -1: BLAS left as configured
    assert seen == [{1}, before]
    assert blas_threads() == before  # restored after the call


@pytest.mark.parametrize("shape", [(300, 700), (700, 300)])
def test_pca_randomized_agrees_with_exact(shape: tuple[int, int]) -> None:
    X = _low_rank(*shape, seed=1)
    exact = R.pca(X, 3)
    for data in (X, X.astype(np.float32)):
        fast = R.pca(data, 3, solver="randomized")
        np.testing.assert_allclose(fast, exact, atol=1e-4 * np.abs(exact).max())
    np.testing.assert_allclose(np.abs(exact), np.abs(PCA(3).fit_transform(X)), atol=1e-7)


@pytest.mark.parametrize("solver", ["gram", "covariance", "randomized"])
def test_pca_sign_fix_holds_for_every_solver(solver: R.PCASolver) -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 4)) * [2.0, 0.1, 5.0, 0.1]
    for data in (X, -X, X[::-1]):
        out = R.pca(data, 2, solver=solver)
        assert np.corrcoef(out[:, 0], data[:, 2])[0, 1] > 0.99
        assert np.corrcoef(out[:, 1], data[:, 0])[0, 1] > 0.99


def test_pca_20000_rows_in_bounded_memory() -> None:
    import tracemalloc

    X = _low_rank(20_000, 64, seed=2).astype(np.float32)
    out = R.pca(X, 2)
    np.testing.assert_allclose(np.abs(out), np.abs(PCA(2).fit_transform(X)), rtol=1e-4, atol=1e-3)
    wide = np.random.default_rng(3).normal(size=(20_000, 512)).astype(np.float32)
    tracemalloc.start()
    try:
        R.pca(wide, 2)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # the previous code held two float64 copies of X (2 x 78 MB); now a few 16 MB blocks
    assert peak < wide.size * 8 / 2


def test_prepared_shares_one_decomposition(
    digits: tuple[np.ndarray, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(6)
    X = digits[0][:300] @ np.linalg.qr(rng.normal(size=(200, 64)))[0].T  # (300, 200)
    X = (X + rng.normal(0.0, 0.5, X.shape)).astype(np.float32)
    built: list[tuple[int, int]] = []
    real = P._Basis.__init__

    def counting(self: P._Basis, M: np.ndarray, k: int, solver: str) -> None:
        built.append((M.shape[1], k))
        real(self, M, k, solver)

    monkeypatch.setattr(P._Basis, "__init__", counting)
    p = R.prepare(X, ["pca", "tsne"])
    assert built == []  # lazy: nothing is computed (or checked) before a reducer asks
    layout_pca = R.reduce("pca", p, 2)
    layout_tsne = R.reduce("tsne", p, 2)
    assert [b for b in built if b[0] == 200] == [(200, 50)]  # one PCA of X serves both
    np.testing.assert_allclose(layout_pca, R.pca(X, 2), atol=1e-8)
    np.testing.assert_array_equal(layout_tsne, R.reduce("tsne", X, 2))
    assert R.warm_init(np.arange(300), layout_tsne, np.arange(300), p) is not None
    assert R.prepare(p) is p


def test_prepared_reports_bad_input_when_used() -> None:
    p = R.prepare(np.full((10, 3), np.nan), ["pca"])
    with pytest.raises(ValueError, match="NaN"):
        R.reduce("pca", p, 2)


@pytest.mark.parametrize(
    ("X", "k"),
    [
        (np.ones((1, 5)), 2),  # a single row
        (np.full((40, 6), 3.5), 2),  # zero variance
        (np.full((40, 6), 3.5), 3),
    ],
)
def test_pca_degenerate_input_gives_zeros(X: np.ndarray, k: int) -> None:
    out = R.pca(X, k)
    assert out.shape == (len(X), k)
    assert np.array_equal(out, np.zeros_like(out))


def test_pca_fewer_dims_than_components_pads_with_zeros() -> None:
    X = np.random.default_rng(2).normal(size=(30, 1))
    out = R.pca(X, 3)
    assert out.shape == (30, 3)
    np.testing.assert_allclose(np.abs(out[:, 0]), np.abs(X[:, 0] - X[:, 0].mean()))
    assert not out[:, 1:].any()


def test_pca_3d(digits: tuple[np.ndarray, np.ndarray]) -> None:
    out = R.reduce("pca", digits[0], 3)
    assert out.shape == (500, 3)
    assert np.all(np.diff(out.var(axis=0)) < 0)  # decreasing variance


# --- tsne -------------------------------------------------------------------------------------

def test_tsne_separates_digit_classes(
    digits: tuple[np.ndarray, np.ndarray], digits_tsne: np.ndarray
) -> None:
    assert digits_tsne.shape == (500, 2) and digits_tsne.dtype == np.float64
    assert knn_accuracy(digits_tsne, digits[1]) > 0.9


def test_tsne_is_deterministic(digits: tuple[np.ndarray, np.ndarray]) -> None:
    X = digits[0][:150]
    np.testing.assert_array_equal(R.tsne(X, 2, random_state=3), R.tsne(X, 2, random_state=3))


def test_tsne_warm_start_moves_little_and_keeps_quality(
    digits: tuple[np.ndarray, np.ndarray], digits_tsne: np.ndarray
) -> None:
    X, y = digits
    warm = R.reduce("tsne", X, 2, init=digits_tsne)
    assert disparity(digits_tsne, warm) < 0.02
    assert knn_accuracy(warm, y) > 0.9


def test_tsne_warm_start_with_change_hint(
    digits: tuple[np.ndarray, np.ndarray], digits_tsne: np.ndarray
) -> None:
    from lightning_embproj.metrics.scores import neighbourhood_overlap

    X, y = digits
    X2 = X + np.random.default_rng(8).normal(0.0, 0.5, X.shape)  # the next epoch, moved a bit
    change = float(np.mean(neighbourhood_overlap(X, X2, k=10)))
    assert 0.5 < change < 1.0 and R.warm_iterations(change) < R.warm_iterations(None)
    today = R.tsne(X2, 2, init=digits_tsne)
    hinted = R.reduce("tsne", X2, 2, init=digits_tsne, change=change)
    assert not np.array_equal(hinted, today)  # fewer iterations: another layout
    ref = NearestNeighbors(n_neighbors=11).fit(X2).kneighbors(return_distance=False)[:, 1:]

    def kept(Y: np.ndarray) -> float:
        got = NearestNeighbors(n_neighbors=11).fit(Y).kneighbors(return_distance=False)[:, 1:]
        return float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ref, got, strict=True)]))

    assert kept(hinted) >= kept(today) - 0.01
    assert disparity(digits_tsne, hinted) <= disparity(digits_tsne, today) + 0.005
    assert knn_accuracy(hinted, y) > 0.9


def test_warm_iterations_rule() -> None:
    assert [R.warm_iterations(c) for c in (None, 0.0, 0.5, 0.75, 0.9, 1.0)] == [
        250, 250, 250, 150, 90, 50,
    ]
    with pytest.raises(ValueError, match=r"change must be in \[0, 1\].*got 1.5"):
        R.tsne(np.zeros((20, 3)), 2, change=1.5)


def test_tsne_gradient_method_by_size() -> None:
    assert R.tsne_gradient_method(4000, 2) == "bh"
    assert R.tsne_gradient_method(10_000, 2) == "fft"
    assert R.tsne_gradient_method(20_000, 2, warm=True) == "bh"  # warm: BH up to 20,000
    assert R.tsne_gradient_method(20_001, 2, warm=True) == "fft"
    assert R.tsne_gradient_method(20_000, 3) == "bh"  # openTSNE's FFT is 1-2-D only


def test_tsne_fft_path_and_n_jobs(
    digits: tuple[np.ndarray, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    X, y = digits[0][:300], digits[1][:300]
    monkeypatch.setattr(T, "_TSNE_FFT_MIN_ROWS", 100)  # the 20,000-row paths, on 300 rows
    monkeypatch.setattr(T, "_TSNE_WARM_BH_MAX_ROWS", 100)
    out = R.reduce("tsne", X, 2, n_jobs=2)
    assert out.shape == (300, 2) and np.isfinite(out).all()
    assert knn_accuracy(out, y) > 0.9
    warm = R.reduce("tsne", X, 2, init=out, n_jobs=2)
    assert disparity(out, warm) < 0.02 and knn_accuracy(warm, y) > 0.9
    with pytest.raises(ValueError, match=r"n_jobs must be a positive int or -1 .*, got 0"):
        R.reduce("tsne", X, 2, n_jobs=0)


def test_tsne_reads_a_thread_function_between_chunks(
    digits: tuple[np.ndarray, np.ndarray],
) -> None:
    """A run that starts on one thread takes two once its function says so (training ended),
    and the layout is the fixed-thread one: only the speed changes."""
    X = digits[0]
    calls: list[int] = []

    def threads() -> int:
        calls.append(1)
        return 1 if len(calls) < 4 else 2

    switched = R.tsne(X, 2, n_jobs=threads)
    fixed = R.tsne(X, 2, n_jobs=1)
    # 500 rows: 125 + 250 iterations in chunks of 50 -> 3 + 5 chunks, plus the affinities.
    assert len(calls) == 1 + 3 + 5
    np.testing.assert_allclose(switched, fixed, atol=1e-6 * np.abs(fixed).max())
    with pytest.raises(ValueError, match=r"n_jobs must be .* or a function returning one, "
                                         r"got 'all'"):
        R.tsne(X, 2, n_jobs=lambda: "all")  # type: ignore[arg-type,return-value]


def test_tsne_cold_iterations_and_neighbours_by_size(monkeypatch: pytest.MonkeyPatch) -> None:
    """Up to 5,000 rows a cold run is 125 + 250 iterations, 250 + 500 above; exact kNN up to
    50,000 rows (as the measurements in tsne.py say)."""
    import openTSNE

    seen: list[tuple[int, int, str]] = []
    real = openTSNE.TSNE.prepare_initial

    def spy(self: openTSNE.TSNE, *args: object, **kwargs: object) -> object:
        seen.append((self.early_exaggeration_iter, self.n_iter, self.neighbors))
        return real(self, *args, **kwargs)

    assert R.tsne_neighbors(50_000) == "exact" and R.tsne_neighbors(50_001) == "annoy"
    monkeypatch.setattr(openTSNE.TSNE, "prepare_initial", spy)
    X = np.random.default_rng(0).normal(size=(120, 5))
    R.tsne(X, 2)
    monkeypatch.setattr(T, "_TSNE_SHORT_COLD_MAX_ROWS", 100)
    monkeypatch.setattr(T, "_TSNE_EXACT_KNN_MAX_ROWS", 100)
    R.tsne(X, 2)
    assert seen == [(125, 250, "exact"), (250, 500, "annoy")]


def test_tsne_3d(digits: tuple[np.ndarray, np.ndarray]) -> None:
    X, y = digits[0][:200], digits[1][:200]
    out = R.tsne(X, 3)
    assert out.shape == (200, 3) and np.isfinite(out).all()
    assert knn_accuracy(out, y) > 0.8


def test_tsne_pca_step_for_wide_input() -> None:
    rng = np.random.default_rng(4)
    X = rng.normal(size=(60, 120))
    out = R.tsne(X, 2)
    assert out.shape == (60, 2) and np.isfinite(out).all()


@pytest.mark.parametrize("n", [1, 2, 4, 5, 7, 12])
def test_tsne_small_n(n: int) -> None:
    X = np.random.default_rng(n).normal(size=(n, 8))
    out = R.tsne(X, 2)
    assert out.shape == (n, 2) and np.isfinite(out).all()
    if n < 5:  # too few rows for t-SNE: the PCA layout
        np.testing.assert_array_equal(out, R.pca(X, 2))


def test_tsne_zero_variance_gives_zeros() -> None:
    out = R.tsne(np.full((50, 70), 2.0), 2)
    assert np.array_equal(out, np.zeros((50, 2)))


# --- umap -------------------------------------------------------------------------------------

def test_umap_missing_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "umap", None)
    with pytest.raises(ImportError, match=r'pip install "lightning-embproj\[umap\]"'):
        R.reduce("umap", np.zeros((20, 3)), 2)


@pytest.mark.slow
def test_umap_real_run_cold_and_warm(digits: tuple[np.ndarray, np.ndarray]) -> None:
    X, y = digits[0][:300], digits[1][:300]
    cold = R.umap(X, 2)
    assert cold.shape == (300, 2) and cold.dtype == np.float64
    assert knn_accuracy(cold, y) > 0.9
    # next epoch, slightly different embeddings: the warm start stays closer than a cold run
    X2 = X + np.random.default_rng(0).normal(0.0, 1.0, X.shape)
    warm, fresh = R.umap(X2, 2, init=cold), R.umap(X2, 2)
    assert disparity(cold, warm) < 0.6 * disparity(cold, fresh)
    assert knn_accuracy(warm, y) > 0.9
    small = R.umap(X[:8], 2)
    assert small.shape == (8, 2) and np.isfinite(small).all()


# --- warm_init --------------------------------------------------------------------------------

def test_warm_init_shared_keys_keep_positions_new_rows_follow_neighbours() -> None:
    rng = np.random.default_rng(5)
    prev_keys = np.array([10, 20, 30, 40], dtype=np.int64)
    prev_layout = rng.normal(size=(4, 2)) * 10
    keys = np.array([40, 99, 10, 30, 77], dtype=np.int64)  # 99, 77 are new; 20 left
    X = np.array([[4.0], [1.1], [1.0], [3.0], [2.9]])
    out = R.warm_init(prev_keys, prev_layout, keys, X)
    assert out is not None and out.shape == (5, 2)
    np.testing.assert_array_equal(out[[0, 2, 3]], prev_layout[[3, 0, 2]])
    # 99 sits next to key 10 in X, 77 next to key 30: their positions plus a tiny jitter
    np.testing.assert_allclose(out[1], prev_layout[0], atol=0.05)
    np.testing.assert_allclose(out[4], prev_layout[2], atol=0.05)
    assert not np.array_equal(out[1], prev_layout[0])
    again = R.warm_init(prev_keys[::-1], prev_layout[::-1], keys, X)
    np.testing.assert_array_equal(out, again)


def test_warm_init_needs_three_shared_keys() -> None:
    prev_keys, layout = np.arange(5), np.zeros((5, 2))
    X = np.zeros((4, 3))
    assert R.warm_init(prev_keys, layout, np.array([0, 1, 7, 8]), X) is None
    assert R.warm_init(np.array([], dtype=np.int64), np.zeros((0, 2)), np.arange(4), X) is None
    assert R.warm_init(prev_keys, layout, np.array([0, 1, 2, 8]), X) is not None
