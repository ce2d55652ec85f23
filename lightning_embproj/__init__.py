"""lightning-embproj: watch your embeddings change while a Lightning model trains.

Example:
    >>> from lightning_embproj import EmbeddingProjector, read_projections
    >>> projector = EmbeddingProjector(embedding_key="embeddings", label_key="labels")
"""

from lightning_embproj.callback import EmbeddingProjector
from lightning_embproj.sinks.local import read_metrics, read_projections
from lightning_embproj.types import EpochSample, Projection

__all__ = ["EmbeddingProjector", "EpochSample", "Projection", "read_metrics", "read_projections"]
__version__ = "0.1.0"
