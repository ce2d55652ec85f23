"""Motion in the layout, and how much of it the embedding explains (metrics.motion)."""

from __future__ import annotations

import numpy as np
import pytest

from lightning_embproj.metrics.motion import mean_displacement, motion_explained


def test_mean_displacement_is_relative_to_the_previous_layout_size():
    P = np.random.default_rng(0).normal(size=(100, 2))
    moved = P + [0.3, 0.4]  # every point moves by 0.5
    rms = np.sqrt(((P - P.mean(0)) ** 2).sum(1).mean())
    assert mean_displacement(P, moved, normalize=False) == pytest.approx(0.5)
    assert mean_displacement(P, moved) == pytest.approx(0.5 / rms)
    assert mean_displacement(P * 10, moved * 10) == pytest.approx(0.5 / rms)
    assert mean_displacement(np.zeros((4, 2)), np.ones((4, 2))) > 0  # collapsed previous layout


def test_motion_explained_is_undefined_when_one_side_is_constant():
    kept = np.array([1.0, 0.5, 0.2, 0.9])
    assert motion_explained(kept, np.array([0.0, 1.0, 2.0, 0.1])) == pytest.approx(1.0)
    assert np.isnan(motion_explained(np.ones(4), np.array([0.0, 1.0, 2.0, 0.1])))
    assert np.isnan(motion_explained(kept, np.zeros(4)))
    assert np.isnan(motion_explained(kept[:2], np.array([0.0, 1.0])))  # fewer than 3 points
