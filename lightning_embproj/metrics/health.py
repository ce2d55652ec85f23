"""Label-free health of an embedding, cluster scores, per-label rows and temporal stability.

Pure numpy / scikit-learn functions over one run (or two runs matched on their tracking
keys): RankMe (Garrido et al., ICML 2023), uniformity (Wang & Isola, ICML 2020), linear CKA
between runs (Kornblith et al., ICML 2019), cluster agreement scores, one row per label, and
the temporal stability of a layout sequence (Vernier et al., EuroVis 2020).

Example:
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(200, 16))
    >>> round(rankme(X)) > round(rankme(X[:, :2] @ rng.normal(size=(2, 16))))
    True
    >>> round(linear_cka(X, X @ np.linalg.qr(rng.normal(size=(16, 16)))[0]), 6)
    1.0
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from lightning_embproj.evolve.clusters import NOISE, check_ids, check_keys, shared_rows
from lightning_embproj.metrics.neighbours import as_matrix, knn, knn_k
from lightning_embproj.metrics.scores import _codes, _vote

HEALTH_DOCS: dict[str, str] = {
    "health/rankme": "RankMe (Garrido et al. 2023): exp of the entropy of the normalised "
    "singular values of the embeddings, 1..min(N, D); falls when embeddings collapse into "
    "fewer dimensions.",
    "health/uniformity": "Uniformity (Wang & Isola 2020): log of the mean of "
    "exp(-2 ||u - v||^2) over pairs of L2-normalised embeddings, -4..0; lower = spread more "
    "evenly over the sphere, 0 = all in one direction (2,048 fixed rows above that).",
    "health/cka_previous": "Linear CKA between this run's and the previous run's embeddings "
    "of the same tracked points, 0..1 (1 = the same up to rotation and scale).",
    "clusters/count": "Number of clusters this run (noise excluded).",
    "clusters/noise_fraction": "Fraction of points HDBSCAN left as noise (0 with k-means).",
    "clusters/ari_previous": "Adjusted Rand index between this run's and the previous run's "
    "clusters on the tracked points clustered in both (noise left out; 1 = the same "
    "partition).",
    "clusters/nmi_labels": "Normalized mutual information between clusters and labels on the "
    "clustered points (noise left out), 0..1.",
    "<reducer>/temporal_stability": "Spearman correlation between each point's step length in the "
    "original space and in the aligned layout, pooled over points and consecutive runs "
    "(Vernier et al. 2020; 1 = the layout moves a point as much as the model does).",
}
UNIFORMITY_MAX_POINTS = 2048
PER_LABEL_SILHOUETTE_MAX_POINTS = 5000
_CHUNK_BYTES = 16 * 2**20


def rankme(X: np.ndarray, eps: float = 1e-7) -> float:
    """RankMe: ``exp(-sum p log p)`` with ``p = s / sum(s) + eps`` over the singular values.

    The embeddings are used as they are (not centred), as in the paper. Ranges from about 1
    (rank one) to ``min(N, D)``; NaN for an empty or all-zero matrix. The singular values come
    from the eigenvalues of the smaller Gram matrix (``D x D`` or ``N x N``).

    Example:
        >>> round(rankme(np.eye(4)), 3), round(rankme(np.ones((5, 3))), 3)
        (4.0, 1.0)
    """
    X = as_matrix(X, "X").astype(np.float64)
    if X.size == 0:
        return math.nan
    G = X.T @ X if X.shape[0] >= X.shape[1] else X @ X.T
    s = np.sqrt(np.clip(np.linalg.eigvalsh(G), 0.0, None))
    total = float(s.sum())
    if total <= 0.0:
        return math.nan
    p = s / total + eps
    return float(np.exp(-(p * np.log(p)).sum()))


def _subsample(n: int, max_points: int | None) -> np.ndarray | None:
    """Fixed sorted subset of rows (seed 0) above ``max_points``; None keeps them all."""
    if max_points is None or n <= max_points:
        return None
    return np.sort(np.random.default_rng(0).choice(n, max_points, replace=False))


def uniformity(
    X: np.ndarray, t: float = 2.0, max_points: int | None = UNIFORMITY_MAX_POINTS
) -> float:
    """Uniformity: ``log mean exp(-t ||u - v||^2)`` over pairs ``i < j`` of normalised rows.

    Lower (down to ``-2t``) means spread more evenly over the unit sphere; 0 means every row
    points the same way. Rows are L2-normalised (all-zero rows stay zero). Above
    ``max_points`` rows, all pairs of a fixed random subset (seed 0) of that many rows.
    NaN with fewer than 2 rows. Memory ``O(chunk * max_points)``.

    Example:
        >>> uniformity(np.ones((4, 3)))
        0.0
        >>> round(uniformity(np.array([[1.0, 0.0], [-1.0, 0.0]])), 3)
        -8.0
    """
    X = as_matrix(X, "X").astype(np.float64)
    if t <= 0:
        raise ValueError(f"t must be > 0, got {t!r}")
    rows = _subsample(X.shape[0], max_points)
    U = X if rows is None else X[rows]
    n = U.shape[0]
    if n < 2:
        return math.nan
    norms = np.linalg.norm(U, axis=1, keepdims=True)
    U = U / np.where(norms > 0, norms, 1.0)
    sq = np.einsum("ij,ij->i", U, U)
    total = 0.0
    step = max(16, _CHUNK_BYTES // (8 * n))
    for s in range(0, n, step):
        e = min(n, s + step)
        d = sq[s:e, None] + sq[None, :] - 2.0 * (U[s:e] @ U.T)
        # -t * d lies in [-4t, 0]: exp cannot overflow or vanish, no log-sum-exp shift needed
        vals = np.exp(-t * np.clip(d, 0.0, None))
        upper = np.arange(n)[None, :] > np.arange(s, e)[:, None]
        total += float(vals[upper].sum())
    return float(math.log(total / (n * (n - 1) / 2)))


def linear_cka(X: np.ndarray, Y: np.ndarray) -> float:
    """Linear CKA of two representations of the same rows (columns centred).

    ``||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F)``, computed with the ``D x D`` matrices or,
    when that is cheaper (``N`` small against ``D``), with the ``N x N`` Gram matrices in row
    blocks (same value: ``||X^T X||_F = ||X X^T||_F``). Invariant to rotations and isotropic
    scaling of either side; 1 for identical inputs. NaN when either side has no variance or
    fewer than 2 rows.

    Example:
        >>> X = np.random.default_rng(0).normal(size=(30, 5))
        >>> round(linear_cka(X, 3 * X), 6)
        1.0
    """
    X = as_matrix(X, "X").astype(np.float64)
    Y = as_matrix(Y, "Y").astype(np.float64)
    if X.shape[0] != Y.shape[0]:
        raise ValueError(f"X has {X.shape[0]} rows, Y has {Y.shape[0]}: rows must match")
    n, dx, dy = X.shape[0], X.shape[1], Y.shape[1]
    if n < 2:
        return math.nan
    X = X - X.mean(axis=0)
    Y = Y - Y.mean(axis=0)
    if dx * dy + dx * dx + dy * dy <= n * (dx + dy):
        hsic = float(np.square(Y.T @ X).sum())
        nx = float(np.linalg.norm(X.T @ X))
        ny = float(np.linalg.norm(Y.T @ Y))
    else:
        hsic = nx2 = ny2 = 0.0
        step = max(16, _CHUNK_BYTES // (8 * n))
        for s in range(0, n, step):
            K = X[s : s + step] @ X.T
            L = Y[s : s + step] @ Y.T
            hsic += float((K * L).sum())
            nx2 += float(np.square(K).sum())
            ny2 += float(np.square(L).sum())
        nx, ny = math.sqrt(nx2), math.sqrt(ny2)
    if nx <= 0.0 or ny <= 0.0:
        return math.nan
    return float(hsic / (nx * ny))


def _previous_run(prev_keys: Any, X_prev: Any) -> tuple[np.ndarray, np.ndarray]:
    """The previous run's checked keys and matrix (one key per row)."""
    Xp = as_matrix(X_prev, "X_prev")
    pk = check_keys(prev_keys, "prev_keys")
    if pk.size != Xp.shape[0]:
        raise ValueError(
            f"prev_keys has {pk.size} entries, X_prev has {Xp.shape[0]} rows: must match"
        )
    return pk, Xp


def health_metrics(
    keys: np.ndarray | Sequence[int],
    X: np.ndarray,
    prev_keys: np.ndarray | Sequence[int] | None = None,
    X_prev: np.ndarray | None = None,
) -> dict[str, float]:
    """``health/rankme``, ``health/uniformity`` and ``health/cka_previous`` of one run.

    ``health/cka_previous`` is computed on the keys present in both runs (NaN without a
    previous run or with fewer than 2 shared keys).

    Example:
        >>> X = np.random.default_rng(0).normal(size=(50, 8))
        >>> health_metrics(np.arange(50), X, np.arange(50), X)["health/cka_previous"]
        1.0
    """
    X = as_matrix(X, "X")
    keys = check_keys(keys, "keys")
    if keys.size != X.shape[0]:
        raise ValueError(f"keys has {keys.size} entries, X has {X.shape[0]} rows: must match")
    out = {"health/rankme": rankme(X), "health/uniformity": uniformity(X)}
    cka = math.nan
    if prev_keys is not None and X_prev is not None:
        pk, Xp = _previous_run(prev_keys, X_prev)
        ip, ic = shared_rows(pk, keys)
        if ip.size >= 2:
            cka = linear_cka(Xp[ip], X[ic])
            cka = round(cka, 12) if cka == cka else cka  # identical runs read exactly 1.0
    out["health/cka_previous"] = cka
    return out


def cluster_scores(
    keys: np.ndarray | Sequence[int],
    ids: np.ndarray | Sequence[int],
    labels: Sequence[object] | np.ndarray | None = None,
    prev_keys: np.ndarray | Sequence[int] | None = None,
    prev_ids: np.ndarray | Sequence[int] | None = None,
) -> dict[str, float]:
    """Cluster scores of one run, named as in :data:`HEALTH_DOCS`.

    ``clusters/count``, ``clusters/noise_fraction``, ``clusters/ari_previous``,
    ``clusters/nmi_labels``. Noise (``-1``) is no cluster: it is left out of the count and of
    both scores, and measured by ``noise_fraction`` alone. ``ari_previous``:
    ``sklearn.metrics.adjusted_rand_score`` of the previous and current ids on the keys
    clustered in both runs (NaN without a previous run or with fewer than 2 such keys).
    ``nmi_labels``: ``normalized_mutual_info_score`` of labels and ids on the clustered rows
    (NaN without labels or without clustered rows).

    Example:
        >>> keys, labels = [1, 2, 3, 4], ["a", "a", "b", "b"]
        >>> s = cluster_scores(keys, [0, 0, 1, 1], labels, keys, [5, 5, 6, 6])
        >>> s["clusters/count"], s["clusters/ari_previous"], s["clusters/nmi_labels"]
        (2.0, 1.0, 1.0)
    """
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    keys = check_keys(keys, "keys")
    ids = check_ids(ids, keys.size, "ids")
    out = {
        "clusters/count": float(np.unique(ids[ids != NOISE]).size),
        "clusters/noise_fraction": float((ids == NOISE).mean()) if ids.size else math.nan,
    }
    ari = math.nan
    if prev_keys is not None and prev_ids is not None:
        pk = check_keys(prev_keys, "prev_keys")
        pids = check_ids(prev_ids, pk.size, "prev_ids")
        ip, ic = shared_rows(pk, keys)
        both = (pids[ip] != NOISE) & (ids[ic] != NOISE)
        if both.sum() >= 2:
            ari = float(adjusted_rand_score(pids[ip][both], ids[ic][both]))
    out["clusters/ari_previous"] = ari
    nmi = math.nan
    clustered = ids != NOISE
    if labels is not None and clustered.any():
        codes = _codes(labels, ids.size)[clustered]
        nmi = float(normalized_mutual_info_score(codes, ids[clustered]))
    out["clusters/nmi_labels"] = nmi
    return out


PER_LABEL_COLUMNS: tuple[str, ...] = (
    "label", "count", "silhouette", "knn_accuracy", "centroid_shift",
)


def per_label_table(
    keys: np.ndarray | Sequence[int],
    X: np.ndarray,
    labels: Sequence[object] | np.ndarray,
    prev_keys: np.ndarray | Sequence[int] | None = None,
    X_prev: np.ndarray | None = None,
    k: int = 10,
    max_points: int | None = PER_LABEL_SILHOUETTE_MAX_POINTS,
) -> list[dict[str, Any]]:
    """One row per label (sorted), columns :data:`PER_LABEL_COLUMNS`.

    - ``count``: points with the label.
    - ``silhouette``: mean of ``sklearn.metrics.silhouette_samples`` over the label's points
      (above ``max_points`` rows, over a fixed random subset, seed 0); NaN when the silhouette
      is undefined (fewer than 2 labels) or the label has no point in the subset.
    - ``knn_accuracy``: leave-one-out kNN vote accuracy (``k`` neighbours) of the label's
      points; the count-weighted mean over labels equals
      :func:`lightning_embproj.metrics.scores.knn_accuracy` (same neighbours, same tie rule).
    - ``centroid_shift``: Euclidean distance between the centroid of the label's points in the
      previous run and in this run, over the keys present in both (labels of this run); NaN
      without a previous run or without shared points of that label.

    Example:
        >>> X = np.array([[0.0], [0.1], [5.0], [5.1]])
        >>> rows = per_label_table([1, 2, 3, 4], X, [0, 0, 1, 1], [1, 2, 3, 4], X + 1.0, k=1)
        >>> [(r["label"], r["count"], r["knn_accuracy"], r["centroid_shift"]) for r in rows]
        [(0, 2, 1.0, 1.0), (1, 2, 1.0, 1.0)]
    """
    from sklearn.metrics import silhouette_samples

    X = as_matrix(X, "X")
    keys = check_keys(keys, "keys")
    n = X.shape[0]
    if keys.size != n:
        raise ValueError(f"keys has {keys.size} entries, X has {n} rows: must match")
    codes = _codes(labels, n)
    lab = np.asarray(labels)
    uniq_rows = np.unique(codes, return_index=True)[1]
    n_cls = uniq_rows.size

    sil = np.full(n_cls, math.nan)
    rows = _subsample(n, max_points)
    sub = np.arange(n) if rows is None else rows
    sub_codes = codes[sub]
    present = np.unique(sub_codes).size
    if 2 <= present <= sub.size - 1:
        values = silhouette_samples(X[sub], sub_codes)
        sums = np.bincount(sub_codes, weights=values, minlength=n_cls)
        cnt = np.bincount(sub_codes, minlength=n_cls)
        with np.errstate(invalid="ignore", divide="ignore"):
            sil = np.where(cnt > 0, sums / np.maximum(cnt, 1), math.nan)

    acc = np.full(n_cls, math.nan)
    if n >= 2:
        hit = (_vote(knn(X, knn_k(n, k)), codes) == codes).astype(np.float64)
        acc = np.bincount(codes, weights=hit, minlength=n_cls) / np.bincount(codes, minlength=n_cls)

    shift = np.full(n_cls, math.nan)
    if prev_keys is not None and X_prev is not None:
        pk, Xp = _previous_run(prev_keys, X_prev)
        if Xp.shape[1] != X.shape[1]:
            raise ValueError(f"X_prev has {Xp.shape[1]} dims, X has {X.shape[1]}: must match")
        ip, ic = shared_rows(pk, keys)
        if ip.size:
            c = codes[ic]
            cnt = np.bincount(c, minlength=n_cls)[:, None]
            mean_now = np.zeros((n_cls, X.shape[1]))
            mean_prev = np.zeros((n_cls, X.shape[1]))
            np.add.at(mean_now, c, X[ic].astype(np.float64))
            np.add.at(mean_prev, c, Xp[ip].astype(np.float64))
            with np.errstate(invalid="ignore", divide="ignore"):
                d = np.linalg.norm((mean_now - mean_prev) / cnt, axis=1)
            shift = np.where(cnt[:, 0] > 0, d, math.nan)

    counts = np.bincount(codes, minlength=n_cls)
    out = []
    for c in range(n_cls):
        value = lab[uniq_rows[c]]
        out.append({
            "label": value.item() if isinstance(value, np.generic) else value,
            "count": int(counts[c]),
            "silhouette": float(sil[c]),
            "knn_accuracy": float(acc[c]),
            "centroid_shift": float(shift[c]),
        })
    return out


def step_lengths(
    X_prev: np.ndarray, X: np.ndarray, L_prev: np.ndarray, L: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Each matched row's step length in the original space and in the layout."""
    X_prev, X = as_matrix(X_prev, "X_prev"), as_matrix(X, "X")
    L_prev, L = as_matrix(L_prev, "L_prev"), as_matrix(L, "L")
    if X_prev.shape != X.shape or L_prev.shape != L.shape or X.shape[0] != L.shape[0]:
        raise ValueError(
            "X_prev, X must have one shape and L_prev, L another, with the same rows; got "
            f"{X_prev.shape}, {X.shape}, {L_prev.shape}, {L.shape}"
        )
    d_orig = np.linalg.norm(X.astype(np.float64) - X_prev, axis=1)
    d_lay = np.linalg.norm(L.astype(np.float64) - L_prev, axis=1)
    return d_orig, d_lay


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rho (average ranks for ties); NaN with < 3 values or a constant side."""
    from scipy.stats import rankdata

    if a.size < 3:
        return math.nan
    ra, rb = rankdata(a), rankdata(b)
    ra -= ra.mean()
    rb -= rb.mean()
    den = math.sqrt(float(ra @ ra) * float(rb @ rb))
    return float(ra @ rb) / den if den > 0 else math.nan


def temporal_stability(
    X_prev: np.ndarray, X: np.ndarray, L_prev: np.ndarray, L: np.ndarray
) -> float:
    """Spearman correlation of step lengths in the original space and in the layout.

    Vernier et al. (EuroVis 2020) for one pair of consecutive runs, rows already matched
    (same points, same order), layouts aligned. 1: the layout moves most the points the model
    moved most. NaN with fewer than 3 rows or no movement on one side. Pool several runs with
    :class:`StabilityPool`.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> X0 = rng.normal(size=(50, 8))
        >>> step = rng.normal(size=(50, 1)) * rng.normal(size=(50, 8))
        >>> L0 = X0[:, :2]
        >>> temporal_stability(X0, X0 + step, L0, L0 + 2 * step[:, :2]) > 0.5
        True
    """
    return _spearman(*step_lengths(X_prev, X, L_prev, L))


def _priority(keys: np.ndarray, run: int) -> np.ndarray:
    """splitmix64 of (key, run): a fixed pseudo-random order of (run, point) pairs."""
    with np.errstate(over="ignore"):
        z = keys.astype(np.uint64) + np.uint64(run) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


class StabilityPool:
    """Step lengths pooled over consecutive runs for :func:`temporal_stability`, bounded.

    Keeps at most ``capacity`` (original, layout) step-length pairs: those with the smallest
    hash of (run number, key), a fixed uniform sample of all pairs seen (bottom-k, as the
    sampler does), so memory is ``O(capacity)`` and the result does not depend on timing.
    :meth:`state_dict` holds plain ints and lists (``torch.load(weights_only=True)`` refuses
    numpy arrays).

    Example:
        >>> rng = np.random.default_rng(0)
        >>> pool = StabilityPool(capacity=1000)
        >>> X0 = rng.normal(size=(40, 4)); X1 = X0 + rng.normal(size=(40, 4))
        >>> pool.add(np.arange(40), X0, X1, X0[:, :2], X1[:, :2])
        >>> pool.add(np.arange(40), X1, X1, X1[:, :2], X1[:, :2] + 1e-3 * (X1 - X0)[:, :2])
        >>> len(pool), round(pool.value(), 2) > 0.5
        (80, True)
    """

    def __init__(self, capacity: int = 100_000) -> None:
        if not isinstance(capacity, (int, np.integer)) or capacity < 3:
            raise ValueError(f"capacity must be an int >= 3, got {capacity!r}")
        self.capacity = int(capacity)
        self.runs = 0
        self.priority = np.zeros(0, dtype=np.uint64)
        self.original = np.zeros(0)
        self.layout = np.zeros(0)

    def __len__(self) -> int:
        return int(self.priority.size)

    def add(
        self,
        keys: np.ndarray | Sequence[int],
        X_prev: np.ndarray,
        X: np.ndarray,
        L_prev: np.ndarray,
        L: np.ndarray,
    ) -> None:
        """Add one pair of consecutive runs, rows matched; ``keys`` name the rows."""
        d_orig, d_lay = step_lengths(X_prev, X, L_prev, L)
        keys = check_keys(keys, "keys")
        if keys.size != d_orig.size:
            raise ValueError(f"keys has {keys.size} entries, the runs {d_orig.size} rows")
        prio = np.concatenate([self.priority, _priority(keys, self.runs)])
        a = np.concatenate([self.original, d_orig])
        b = np.concatenate([self.layout, d_lay])
        if prio.size > self.capacity:
            keep = np.argsort(prio, kind="stable")[: self.capacity]
            prio, a, b = prio[keep], a[keep], b[keep]
        self.priority, self.original, self.layout = prio, a, b
        self.runs += 1

    def value(self) -> float:
        """Spearman correlation over the pooled pairs (NaN with fewer than 3)."""
        return _spearman(self.original, self.layout)

    def state_dict(self) -> dict[str, Any]:
        return {
            "capacity": self.capacity, "runs": self.runs,
            "priority": self.priority.tolist(), "original": self.original.tolist(),
            "layout": self.layout.tolist(),
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> StabilityPool:
        try:
            pool = cls(int(state["capacity"]))
            pool.runs = int(state["runs"])
            pool.priority = np.asarray(state["priority"], dtype=np.uint64).reshape(-1)
            pool.original = np.asarray(state["original"], dtype=np.float64).reshape(-1)
            pool.layout = np.asarray(state["layout"], dtype=np.float64).reshape(-1)
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(
                "stability pool state must be a dict with 'capacity', 'runs' (ints) and "
                f"'priority', 'original', 'layout' (lists of equal length); got {state!r:.200}"
            ) from err
        if not pool.priority.size == pool.original.size == pool.layout.size:
            raise ValueError(
                "stability pool state: 'priority', 'original', 'layout' lengths differ"
            )
        return pool
