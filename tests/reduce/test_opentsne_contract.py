"""Contract of the openTSNE internals the online t-SNE (reduce/tsne_online.py) relies on.

``anchored_gradient`` calls ``openTSNE.tsne.kl_divergence_bh`` / ``kl_divergence_fft`` and the
private ``openTSNE._tsne.estimate_positive_gradient_nn``; ``descend`` is openTSNE's update rule
without its re-centring; the affinities come from ``openTSNE.affinity.PerplexityBasedNN``.
pyproject.toml pins openTSNE below 2; a release that renames, re-signs or changes any of these
fails here, not in a user's training run.
"""

from __future__ import annotations

import inspect

import numpy as np
import openTSNE
import pytest
import scipy.sparse as sp
from openTSNE import TSNEEmbedding, _tsne
from openTSNE.affinity import PerplexityBasedNN
from openTSNE.tsne import kl_divergence_bh, kl_divergence_fft
from sklearn.datasets import load_digits

from lightning_embproj.reduce.tsne_online import anchored_gradient, descend


@pytest.fixture(scope="module")
def problem() -> tuple[np.ndarray, PerplexityBasedNN, np.ndarray]:
    """200 digits, their affinities and a layout at t-SNE's own scale (RMS radius ~ sqrt(N))."""
    X = load_digits().data[:200] / 16.0
    aff = PerplexityBasedNN(X, perplexity=20.0, method="exact", random_state=0, n_jobs=1,
                            verbose=False)
    Xc = X - X.mean(axis=0)
    Y = Xc @ np.linalg.svd(Xc, full_matrices=False)[2][:2].T
    return X, aff, Y * (np.sqrt(len(Y)) / np.sqrt((Y**2).sum(axis=1).mean()))


def exact_kl_gradient(Y: np.ndarray, P: np.ndarray) -> np.ndarray:
    """openTSNE's convention (dof 1): sum_j (p_ij - w_ij / Z) w_ij (y_i - y_j), w = 1 / (1 + d²)."""
    diff = Y[:, None, :] - Y[None, :, :]
    w = 1.0 / (1.0 + (diff**2).sum(axis=2))
    np.fill_diagonal(w, 0.0)
    return (((P - w / w.sum()) * w)[:, :, None] * diff).sum(axis=1)


def exact_attraction(Y: np.ndarray, Pc: sp.csr_matrix, ref: np.ndarray) -> np.ndarray:
    """sum_j pc_ij w_ij (y_i - r_j) over the stored entries, w = 1 / (1 + |y_i - r_j|^2)."""
    C = Pc.tocoo()
    diff = Y[C.row] - ref[C.col]
    w = C.data / (1.0 + (diff**2).sum(axis=1))
    out = np.zeros_like(Y)
    np.add.at(out, C.row, w[:, None] * diff)
    return out


def test_the_pinned_major_version_is_installed() -> None:
    assert int(openTSNE.__version__.split(".")[0]) == 1


def test_names_and_call_signatures() -> None:
    for fn, params in ((kl_divergence_bh, "bh_params"), (kl_divergence_fft, "fft_params")):
        sig = inspect.signature(fn)
        assert list(sig.parameters)[:4] == ["embedding", "P", "dof", params]
        assert {"reference_embedding", "should_eval_error", "n_jobs"} <= set(sig.parameters)
        # both get bh_params and fft_params: each must swallow the other's
        assert any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
    assert callable(_tsne.estimate_positive_gradient_nn)
    assert {"perplexity", "method", "random_state", "n_jobs", "verbose"} <= set(
        inspect.signature(PerplexityBasedNN).parameters)
    assert "perplexity" in inspect.signature(PerplexityBasedNN.to_new).parameters


def test_affinities_are_normalised_as_tsne_next_assumes(problem) -> None:
    X, aff, _ = problem
    P = aff.P
    assert sp.issparse(P) and abs(P - P.T).max() < 1e-12  # symmetric
    assert P.sum() == pytest.approx(1.0)  # over all N^2 entries
    cross = aff.to_new(X[:30] + 0.01, perplexity=20.0)
    assert cross.shape == (30, len(X))
    np.testing.assert_allclose(np.asarray(cross.sum(axis=1)).ravel(), 1.0)  # per row


def test_positive_gradient_adds_the_attraction_to_fixed_points_in_place() -> None:
    rng = np.random.default_rng(0)
    Y, ref = rng.normal(size=(40, 2)) * 3, rng.normal(size=(25, 2)) * 3
    Pc = sp.random(40, 25, density=0.2, random_state=1, format="csr")
    Pc.data = Pc.data.astype(np.float64)
    grad = rng.normal(size=(40, 2))
    before = grad.copy()
    out = _tsne.estimate_positive_gradient_nn(
        Pc.indices, Pc.indptr, Pc.data, Y, ref, grad, 1, num_threads=1, should_eval_error=False)
    assert isinstance(out, tuple) and len(out) == 2  # (sum of P, KL term)
    np.testing.assert_allclose(grad, before + exact_attraction(Y, Pc, ref), rtol=1e-12,
                               atol=1e-12)


def test_kl_gradient_is_the_exact_one_and_the_attraction_adds_to_it(problem) -> None:
    _, aff, Y = problem
    P = aff.P.tocsr()
    exact = exact_kl_gradient(Y, P.toarray())
    _, bh_exact = kl_divergence_bh(Y.copy(), P, dof=1, bh_params={"theta": 0.0}, n_jobs=1)
    np.testing.assert_allclose(bh_exact, exact, rtol=1e-9, atol=1e-12)

    ref = Y[::4] + 1.0
    Pc = sp.csr_matrix(np.eye(len(Y))[:, ::4] * 0.01)
    attraction = exact_attraction(Y, Pc, ref)
    no_pull = sp.csr_matrix((len(Y), len(ref)))
    for method in ("bh", "fft"):
        plain = anchored_gradient(Y, P, no_pull, ref, method, 1)
        # theta 0.5 / the interpolation grid approximate the repulsion only
        err = np.linalg.norm(plain - exact) / np.linalg.norm(exact)
        assert err < 0.05, (method, err)
        np.testing.assert_allclose(anchored_gradient(Y, P, Pc, ref, method, 1) - plain,
                                   attraction, rtol=1e-9, atol=1e-12)


def test_descend_moves_a_layout_as_the_public_optimize_does(problem) -> None:
    _, aff, Y0 = problem
    n_iter = 50
    frozen = np.zeros(len(Y0), dtype=bool)
    no_pull = sp.csr_matrix((len(Y0), 1))
    ours = descend(Y0, aff.P.tocsr(), no_pull, np.zeros((1, 2)), n_iter, "bh", frozen, 1)
    public = TSNEEmbedding(Y0.copy(), aff, negative_gradient_method="bh", theta=0.5,
                           learning_rate=float(len(Y0)), n_jobs=1, random_state=0)
    public = public.optimize(n_iter, exaggeration=1, momentum=0.8, max_step_norm=5)
    public = np.asarray(public)
    # openTSNE re-centres every step (the reason descend has its own loop); the gradient does
    # not depend on the centre, so the two layouts agree once both are centred
    assert np.abs(public.mean(axis=0)).max() < 1e-9
    scale = np.abs(public).max()
    np.testing.assert_allclose(ours - ours.mean(axis=0), public, rtol=0, atol=1e-9 * scale)
    assert np.abs(ours - Y0).max() > 0.1 * scale  # the layout did move


def test_descend_holds_frozen_rows_and_pulls_the_others_to_the_reference(problem) -> None:
    _, aff, Y0 = problem
    frozen = np.arange(len(Y0)) < 50
    ref = Y0 + 5.0
    Pc = sp.csr_matrix(np.eye(len(Y0)) * (0.5 / len(Y0)))
    out = descend(Y0, aff.P.tocsr(), Pc, ref, 30, "bh", frozen, 1)
    assert np.array_equal(out[frozen], Y0[frozen])
    before = np.linalg.norm(Y0[~frozen] - ref[~frozen], axis=1).mean()
    assert np.linalg.norm(out[~frozen] - ref[~frozen], axis=1).mean() < before
