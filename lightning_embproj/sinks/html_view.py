"""Where the HTML view lived in 0.1: its names, kept importable from here for code written
against 0.1. The view itself is :mod:`lightning_embproj.sinks.view`; the package uses that.

Example:
    >>> from lightning_embproj.sinks.html_view import write_view
    >>> write_view("lightning_logs/version_0", "embeddings")     # doctest: +SKIP
    PosixPath('lightning_logs/version_0/embproj/embeddings/view.html')
"""

from __future__ import annotations

from lightning_embproj.sinks.view import (
    CSP,
    PALETTE,
    VIEW_FILE,
    build_payload,
    reducers_in,
    render_view,
    sorted_labels,
    thin_runs,
    write_view,
)

__all__ = ["CSP", "PALETTE", "VIEW_FILE", "build_payload", "reducers_in", "render_view",
           "sorted_labels", "thin_runs", "write_view"]
