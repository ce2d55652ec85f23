"""lightning-embproj: watch your embeddings change while a Lightning model trains.

Example:
    >>> from lightning_embproj import EmbeddingProjector, read_projections
    >>> projector = EmbeddingProjector(embedding_key="embeddings", label_key="labels")
"""

from typing import TYPE_CHECKING, Any

from lightning_embproj.readers import (
    find_run,
    list_validations,
    read_ledger,
    read_lineage,
    read_metrics,
    read_movers,
    read_per_label,
    read_projections,
)
from lightning_embproj.report.notebook import show
from lightning_embproj.results import EpochSample, Projection, RunIdentity, RunResult

if TYPE_CHECKING:
    from lightning_embproj.callback import EmbeddingProjector

__all__ = [
    "EmbeddingProjector", "EpochSample", "Projection", "RunIdentity", "RunResult",
    "find_run", "list_validations", "read_ledger", "read_lineage", "read_metrics",
    "read_movers", "read_per_label", "read_projections", "show",
]
__version__ = "0.2.0.dev0"


def __getattr__(name: str) -> Any:
    # Lightning is imported only when the callback is asked for: the pure stages (and the
    # processes of DDP tests that only use them) start without it.
    if name == "EmbeddingProjector":
        from lightning_embproj.callback import EmbeddingProjector

        return EmbeddingProjector
    raise AttributeError(f"module 'lightning_embproj' has no attribute {name!r}")
