"""The W&B tables of a run: typed ``wandb.Table`` construction and the fixed columns every
table of a set shares.

Example:
    >>> table = build_table({"id": ["a", "b"], "x": [0.5, None]})   # doctest: +SKIP
    >>> table.columns                                                # doctest: +SKIP
    ['id', 'x']
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from lightning_embproj.results import RunResult
from lightning_embproj.sinks.columns import layout_columns, motion_columns
from lightning_embproj.sinks.wandb_history import WANDB_MAX_ROWS


def build_table(columns: dict[str, list[Any]], image_columns: Sequence[str] = ()) -> Any:
    """A ``wandb.Table`` of the given columns; image columns become ``wandb.Image`` cells.

    When every column holds one plain kind of cell (numbers, texts or bools, and ``None``),
    the column types are given up front and the rows set as they are: wandb would otherwise
    infer each cell's type row by row (10,000 rows x 10 columns: 1.2 s of a loaded 2-core
    machine, vs none here), and ends with the same column types (each optional, as wandb's
    default). Any other column (images, lists, numpy scalars) takes wandb's own path.
    """
    import wandb

    cols = dict(columns)
    for key in image_columns:
        cols[key] = [_image(img) for img in cols[key]]
    rows = [list(row) for row in zip(*cols.values(), strict=True)]
    dtypes: list[Any] = [_plain_dtype(values) for values in cols.values()]
    if rows and all(dtype is not None for dtype in dtypes):
        from wandb.sdk.data_types import _dtypes

        # An all-None column (a reducer that failed in this run): "unknown", as wandb's own.
        dtypes = [_dtypes.UnknownType() if d is type(None) else d for d in dtypes]
        table = wandb.Table(columns=list(cols), dtype=dtypes, optional=True)
        table.data = rows  # every cell is of its column's type already
        return table
    return wandb.Table(columns=list(cols), data=rows)


def _plain_dtype(values: list[Any]) -> type | None:
    """``float`` (wandb's number), ``str`` or ``bool`` when every cell but ``None`` is of
    that kind (``int`` counts as a number), ``NoneType`` when all are ``None``; None
    otherwise."""
    kinds = {type(v) for v in values}
    kinds.discard(type(None))
    if not kinds:
        return type(None)
    if kinds <= {int, float}:
        return float
    if kinds == {str}:
        return str
    if kinds == {bool}:
        return bool
    return None


def first_rows(columns: dict[str, list[Any]], keys: np.ndarray, n: int) -> dict[str, list[Any]]:
    """The ``n`` rows with the smallest keys (the same points every epoch), in table order."""
    keep = np.sort(np.argsort(keys, kind="stable")[:n])
    return {c: [v[i] for i in keep] for c, v in columns.items()}


def _image(img: np.ndarray) -> Any:
    import wandb

    return wandb.Image(img[..., 0] if img.shape[-1] == 1 else img)


def fixed_columns(
    projection: RunResult,
    reducers: Sequence[str],
    n_components: int = 2,
) -> dict[str, list[Any]]:
    """The run's contract columns with a fixed set of layout columns.

    The columns of every reducer in ``reducers`` (then of any other layout the run has) come
    last, then the motion columns (``knn_kept``, ``R_moved`` per reducer), ``None`` cells
    where the run lacks that layout, so every run of a set has the same columns.

    Example:
        >>> fixed_columns(result, ["pca", "tsne"])["tsne_x"]   # doctest: +SKIP
        [None, None, None]
    """
    cols = projection.table()
    names = list(reducers) + [r for r in projection.layouts if r not in reducers]
    layout_cols: dict[str, list[Any]] = {}
    n = len(projection.sample)
    for reducer in names:
        layout = projection.layouts.get(reducer)
        dims = layout.shape[1] if layout is not None else n_components
        for col in layout_columns(reducer, dims):
            layout_cols[col] = cols.pop(col, []) or [None] * n
    motion = {col: cols.pop(col, []) or [None] * n for col in motion_columns(names)}
    return {**cols, **layout_cols, **motion}


def installed_row_limit() -> int:
    """``wandb.Table.MAX_ROWS`` of the installed wandb: a ``run.log`` table is cut to it."""
    import wandb

    return int(getattr(wandb.Table, "MAX_ROWS", WANDB_MAX_ROWS))


def plain_cell(value: Any) -> Any:
    """numpy scalars become Python values (a table cell must be JSON-able)."""
    return value.item() if isinstance(value, np.generic) else value
