"""Comparing layouts in tests."""

from __future__ import annotations

import numpy as np
from scipy.spatial import procrustes


def disparity(a: np.ndarray, b: np.ndarray) -> float:
    """Procrustes disparity of two matched layouts (``scipy.spatial.procrustes``): 0 = the same
    shape up to translation, rotation, reflection and scale; 1 = unrelated."""
    return float(procrustes(a, b)[2])
