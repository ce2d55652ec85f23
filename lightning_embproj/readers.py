"""Read the local files back: every projected run, the metrics, the lineage, the movers, the
per-label tables, the ledger.

Each reader takes a log dir (holding ``embproj/``), its ``embproj`` folder, one set's folder,
or any folder above a run (a W&B ``save_dir``: the files are in
``<save_dir>/<project>/<run id>/embproj/``): the one run found below it is read; with several,
``latest=True`` reads the newest, else the error lists them
(:func:`~lightning_embproj.locate.find_run`). ``name`` picks the set when there are several.

Example:
    >>> df = read_projections("lightning_logs/version_0")       # doctest: +SKIP
    >>> df.groupby(["val_index", "epoch", "step"]).size()        # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from lightning_embproj.locate import find_run, find_runs, find_set, last_written, list_sets
from lightning_embproj.sinks.columns import MOVER_COLUMNS
from lightning_embproj.sinks.local import (
    LINEAGE_COLUMNS,
    LINEAGE_FILE,
    METRICS_FILE,
    MOVERS_FILE,
    PER_LABEL_FILE,
    RUN_KEYS,
    read_jsonl,
    read_schema,
    run_files,
)

# Floats read back bit for bit (pandas < 2 parses the last digit loosely by default): a page
# rendered from the files must equal the live one.
ROUND_TRIP = "round_trip"


def read_lineage(path: str | os.PathLike[str], name: str | None = None, *,
                 latest: bool = False) -> Any:
    """The cluster lineage of one set, one row per cluster event per validation run:
    ``val_index``, ``epoch``, ``step``, ``cluster``, ``event`` (survive, split, merge, emerge,
    vanish), ``from_clusters`` (previous ids joined by ``","``), ``size``, ``overlap``. Empty
    (with those columns) when no lineage was written.

    Example:
        >>> read_lineage("lightning_logs/version_0").query("event == 'split'")  # doctest: +SKIP
    """
    import pandas as pd

    file = find_set(path, name, latest=latest) / LINEAGE_FILE
    if not file.exists():
        return pd.DataFrame({c: [] for c in LINEAGE_COLUMNS})
    return pd.read_csv(file, dtype={"event": str, "from_clusters": str}, keep_default_na=False,
                       na_values={"overlap": [""], "size": [""]}, float_precision=ROUND_TRIP)


def list_validations(
    path: str | os.PathLike[str], name: str | None = None, *, latest: bool = False
) -> list[tuple[int, int, int]]:
    """The validation runs written for one set as ``(val_index, epoch, step)``, in run order.

    Example:
        >>> list_validations("lightning_logs/version_0")             # doctest: +SKIP
        [(0, 0, 25), (1, 0, 50), (2, 1, 75)]
    """
    return list(run_files(find_set(path, name, latest=latest)))


def list_epochs(path: str | os.PathLike[str], name: str | None = None, *,
                latest: bool = False) -> list[int]:
    """The epochs with at least one projected validation run, sorted (no file is read).

    Example:
        >>> list_epochs("lightning_logs/version_0")                 # doctest: +SKIP
        [0, 1, 2]
    """
    return sorted({epoch for _, epoch, _ in list_validations(path, name, latest=latest)})


def read_projections(
    path: str | os.PathLike[str],
    name: str | None = None,
    epochs: Iterable[int] | None = None,
    validations: Iterable[int] | None = None,
    *,
    latest: bool = False,
) -> Any:
    """Read the projected validation runs of one embedding set into one ``pandas.DataFrame``.

    Args:
        path: the trainer's log dir, its ``embproj`` folder, or one set's folder.
        name: the embedding set; may be left out when there is only one.
        epochs: read only the runs of these epochs (see :func:`list_epochs`). Default: all.
        validations: read only these ``val_index`` values (see :func:`list_validations`).
        latest: ``path`` is a folder above several runs (a W&B ``save_dir``): read the newest
            (see :func:`find_run`); without it, several runs are an error that lists them.

    Returns:
        A DataFrame with the contract's columns and one row per point per run, sorted by
        ``val_index``. Text columns (string ids included) come back as ``str``, exactly as written.
    """
    import pandas as pd

    folder = find_set(path, name, latest=latest)
    files = run_files(folder)
    if epochs is not None:
        wanted_epochs = {int(e) for e in epochs}
        files = {k: f for k, f in files.items() if k[1] in wanted_epochs}
    if validations is not None:
        wanted_runs = {int(v) for v in validations}
        files = {k: f for k, f in files.items() if k[0] in wanted_runs}
    if not files:
        asked = "" if epochs is None and validations is None else (
            f" for epochs={sorted(wanted_epochs) if epochs is not None else 'any'}, "
            f"validations={sorted(wanted_runs) if validations is not None else 'any'}"
        )
        raise FileNotFoundError(f"read_projections: no val_*.csv files in {str(folder)!r}{asked}")
    kinds = read_schema(folder)
    df = pd.concat([_read_table(f, kinds) for f in files.values()], ignore_index=True)
    return df.sort_values("val_index", kind="stable").reset_index(drop=True)


def _read_table(file: Path, kinds: dict[str, str]) -> Any:
    """One CSV file of this package as a DataFrame, each column of kind ``kinds`` (text
    columns as written, ``json`` cells parsed; empty number cells NaN)."""
    import pandas as pd

    texts = [c for c, k in kinds.items() if k == "str"]
    df = pd.read_csv(
        file, dtype={c: str for c in texts}, keep_default_na=False,
        na_values={c: [""] for c, k in kinds.items() if k != "str"} if kinds else [""],
        float_precision=ROUND_TRIP,
    )
    for column in df.columns:
        kind = kinds.get(column)
        if kind == "str":
            df[column] = df[column].map(_unescape)
        elif kind == "json":
            df[column] = df[column].map(lambda v: json.loads(v) if isinstance(v, str) else v)
    return df


def _read_run_table(path: str | os.PathLike[str], name: str | None, file_name: str,
                    first: tuple[str, ...], kinds: dict[str, str], latest: bool) -> Any:
    import pandas as pd

    folder = find_set(path, name, latest=latest)
    file = folder / file_name
    if not file.exists():
        return pd.DataFrame({c: [] for c in (*RUN_KEYS, *first)})
    schema = read_schema(folder)
    wanted = {c: k for c, k in schema.items() if c not in RUN_KEYS}
    df = _read_table(file, {**wanted, **{k: "int" for k in RUN_KEYS}, **kinds})
    return df.sort_values("val_index", kind="stable").reset_index(drop=True)


def read_movers(path: str | os.PathLike[str], name: str | None = None, *,
                latest: bool = False) -> Any:
    """The movers of every run of one set, as logged to W&B (``embproj/NAME/movers``): one
    row per mover per run, ``val_index``, ``epoch``, ``step``, ``kind`` (``"changed"``: the
    tracked points that kept the fewest of their k=10 original-space neighbours, lowest
    ``overlap`` first; ``"mislabelled-neighbourhood"``: points whose neighbours mostly carry
    another label, highest ``foreign_fraction`` first), ``overlap``, ``foreign_fraction``,
    then the run's table columns of that point (ids and texts as written). Empty (with the
    first columns) when no movers were written.

    Example:
        >>> movers = read_movers("lightning_logs/version_0")             # doctest: +SKIP
        >>> movers.query("kind == 'changed'").groupby("label").size()    # doctest: +SKIP
    """
    return _read_run_table(path, name, MOVERS_FILE, MOVER_COLUMNS,
                           {"kind": "str", "overlap": "float", "foreign_fraction": "float"},
                           latest)


def read_per_label(path: str | os.PathLike[str], name: str | None = None, *,
                   latest: bool = False) -> Any:
    """The per-label table of every run of one set (``embproj/NAME/per_label`` in W&B): one
    row per label per run, ``val_index``, ``epoch``, ``step``, ``label``, ``count``,
    ``silhouette``, ``knn_accuracy``, ``centroid_shift``. Empty (with the first columns)
    without labels.

    Example:
        >>> read_per_label("lightning_logs/version_0").pivot(
        ...     index="val_index", columns="label", values="knn_accuracy")  # doctest: +SKIP
    """
    numbers = {c: "float" for c in ("silhouette", "knn_accuracy", "centroid_shift")}
    return _read_run_table(path, name, PER_LABEL_FILE, ("label", "count"),
                           {"count": "int", **numbers}, latest)


def _unescape(value: Any) -> Any:
    return value[1:] if isinstance(value, str) and value.startswith("'") else value


def read_ledger(path: str | os.PathLike[str], name: str | None = None, *,
                latest: bool = False) -> Any:
    """Every validation run of one set, one row each, with what became of it: ``val_index``,
    ``epoch``, ``step``, ``chain``, ``stage``, ``status`` (``projected``, ``not_selected``,
    ``dropped``, ``empty``, ``failed``, ``interrupted``, ``queued``), ``reason``, ``wandb``
    (the W&B run id that logged it, or "") and ``run_id``.

    Example:
        >>> read_ledger("lightning_logs/version_0").query("status != 'projected'")  # doctest: +SKIP
    """
    import pandas as pd

    from lightning_embproj.chain.ledger import COLUMNS, read_ledger_file

    rows = read_ledger_file(find_set(path, name, latest=latest))
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    return frame.sort_values("val_index", kind="stable").reset_index(drop=True)


def read_metrics(path: str | os.PathLike[str], name: str | None = None, *,
                 latest: bool = False) -> Any:
    """Read the metrics of one embedding set into a DataFrame, one row per validation run,
    with ``val_index``, ``epoch``, ``step``, ``chain``, ``stage`` and one column per metric
    (files written before chains were recorded read as chain 0 of a ``fit``)."""
    import pandas as pd

    folder = find_set(path, name, latest=latest)
    rows = [
        {"val_index": e["val_index"], "epoch": e["epoch"], "step": e["step"],
         "chain": e.get("chain", 0), "stage": e.get("stage", "fit"), **e["metrics"]}
        for e in read_jsonl(folder / METRICS_FILE)
    ]
    return pd.DataFrame(rows)


# The finders live in `locate`; they are part of this module's public names too.
__all__ = [
    "ROUND_TRIP", "find_run", "find_runs", "find_set", "last_written", "list_epochs", "list_sets",
    "list_validations", "read_ledger", "read_lineage", "read_metrics", "read_movers",
    "read_per_label", "read_projections",
]
