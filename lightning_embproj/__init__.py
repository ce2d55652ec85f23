"""lightning-embproj: watch your embeddings change while a Lightning model trains."""

from lightning_embproj.types import EpochSample, Projection

__all__ = ["EpochSample", "Projection"]
__version__ = "0.1.0"
