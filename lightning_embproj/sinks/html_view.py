"""The HTML view's entry point; the view itself lives in :mod:`lightning_embproj.sinks.view`.

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
