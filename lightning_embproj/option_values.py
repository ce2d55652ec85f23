"""The values of the projector's options, checked one by one: each error names the option,
what it expects and what it got (:class:`~lightning_embproj.options.ProjectorOptions` calls
them).

Example:
    >>> as_list("pca", "reducers"), positive_int(3, "max_samples")
    (['pca'], 3)
    >>> check_key(None, "label_key")  # not given: nothing to check
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from lightning_embproj.metrics.monitor import LABEL_METRICS, MONITOR_METRICS

Key = str | int


def as_list(value: Any, option: str) -> list[Any]:
    """Accept a single string, a list, a tuple or an omegaconf ListConfig."""
    if value is None:
        return []
    if isinstance(value, (str, int)):
        return [value]
    if isinstance(value, Sequence) or hasattr(value, "__iter__") and not isinstance(value, Mapping):
        return list(value)
    raise TypeError(f"{option} must be a list, got {type(value).__name__}: {value!r}")


def check_key(value: Any, option: str) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (str, int)) or value == "":
        raise TypeError(
            f"{option} must be a non-empty string (a key of the validation_step outputs or of a "
            f"dict batch) or an int (an index into a tuple batch), got {value!r}"
        )


def check_set_name(name: str, option: str) -> None:
    """A set name becomes a folder (``embproj/<name>``) and a W&B key: no path tricks."""
    if name in (".", "..") or any(c in name for c in "/\\\0") or name != name.strip():
        raise ValueError(
            f"{option}={name!r} names a folder under embproj/ and a W&B key: it must not be "
            f"'.' or '..', contain '/', '\\' or NUL, or start or end with spaces"
        )


def layer_keys_of(value: Any) -> dict[str, Key | None]:
    """``layers`` as ``{module: key into its output or None}``: a list names modules whose
    output is a tensor (or a tuple led by one); a dict also names what to take from the output
    (a key of a dict / ``ModelOutput``, an attribute of a dataclass, an index of a tuple).

    Example:
        >>> layer_keys_of({"bert.encoder": "last_hidden_state", "head": None})
        {'bert.encoder': 'last_hidden_state', 'head': None}
    """
    if not isinstance(value, Mapping):
        return dict.fromkeys(as_list(value, "layers"))
    keys: dict[str, Key | None] = {}
    for module, key in value.items():
        if key is not None and (isinstance(key, bool) or not isinstance(key, (str, int))
                                or key == ""):
            raise TypeError(
                f"layers[{module!r}] must name what to take from the layer's output: a key "
                f"(str) of a dict or ModelOutput such as 'last_hidden_state', an index (int) "
                f"of a tuple, or None for a tensor output; got {key!r}"
            )
        keys[str(module)] = key
    return keys


def monitor_names(value: Any, label_key: Key | None) -> list[str]:
    """``monitor`` as a list of distinct metric names the training thread can compute.

    Example:
        >>> monitor_names("rankme", None)
        ['rankme']
        >>> monitor_names(["knn_accuracy"], None)
        Traceback (most recent call last):
        ...
        ValueError: monitor: ['knn_accuracy'] need labels: set label_key (or monitor ...
    """
    names = as_list(value, "monitor")
    unknown = [m for m in names if m not in MONITOR_METRICS]
    if unknown:
        later = [m for m in unknown if isinstance(m, str) and (
            m in ("drift/knn_overlap", "cka_previous", "clusters/count", "clusters/noise_fraction",
                  "clusters/ari_previous", "clusters/nmi_labels")
            or m.split("/")[-1] in ("trustworthiness", "displacement", "stability"))]
        why = (f" ({later} are computed in the background only, after the run: they need a "
               f"previous run or a layout, and are logged to W&B and metrics.jsonl, not to "
               f"callback_metrics)" if later else "")
        raise ValueError(
            f"monitor must be a list drawn from {list(MONITOR_METRICS)} (names as in the "
            f"README's Metrics table), got {names!r}{why}"
        )
    needs = [m for m in dict.fromkeys(names) if m in LABEL_METRICS]
    if needs and label_key is None:
        raise ValueError(
            f"monitor: {needs} need labels: set label_key (or monitor only label-free metrics "
            f"such as 'rankme' and 'uniformity'), got label_key=None"
        )
    return list(dict.fromkeys(names))


def positive_int(value: Any, option: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{option} must be a positive integer, got {value!r}")
    return value
