"""Toy-data distances against closed forms."""

import math

import pytest
import torch

from diffbook.metrics import mmd_rbf, pairwise_distance_w1, sliced_wasserstein
from diffbook.metrics.toy import _random_pairs


def test_sliced_wasserstein_of_a_shift_is_its_closed_form():
    """Shifting by m moves every 1D projection by theta . m, so SW_2^2 = E[(theta . m)^2] = |m|^2 / D."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1000, 2, generator=g)
    m = torch.tensor([0.6, -0.8])
    sw = sliced_wasserstein(x, x + m, projections=4000, generator=g)
    assert sw == pytest.approx(float(m.norm()) / math.sqrt(2), rel=0.03)


def test_sliced_wasserstein_between_two_gaussian_samples():
    """N(0, 1) vs N(0, 4) in 1D: W_2 = |1 - 2| = 1 exactly; samples of unequal size go through quantiles."""
    g = torch.Generator().manual_seed(1)
    sw = sliced_wasserstein(torch.randn(20_000, 1, generator=g), 2 * torch.randn(15_000, 1, generator=g), 8)
    assert sw == pytest.approx(1.0, abs=0.03)


def test_sliced_wasserstein_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="expected"):
        sliced_wasserstein(torch.zeros(5, 2), torch.zeros(5, 3))


def test_mmd_is_unbiased_near_zero_for_one_distribution_and_grows_with_a_shift():
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(2, 1500, 2, generator=g)
    same = mmd_rbf(x, y)
    assert abs(same) < 2e-3
    assert mmd_rbf(x, y + 0.5) > 20 * abs(same) and mmd_rbf(x, y + 1.0) > mmd_rbf(x, y + 0.5)


def test_pairwise_distance_w1_of_a_scaled_set_is_its_closed_form():
    x = torch.randn(2_000, 2, generator=torch.Generator().manual_seed(0))
    generator = torch.Generator().manual_seed(1)
    assert pairwise_distance_w1(x, x, generator=generator) == 0
    # The same pairs in both sets: every distance scales by 1.5, so W1 is 0.5 times the mean pairwise distance.
    w1 = pairwise_distance_w1(x, 1.5 * x, generator=torch.Generator().manual_seed(3))
    first, second = _random_pairs(len(x), 20_000, torch.Generator().manual_seed(3))
    assert torch.all(first != second)
    assert w1 == pytest.approx(0.5 * float((x[first] - x[second]).double().norm(dim=1).mean()), rel=1e-9)
    # Blind to location: a shifted set keeps its structure exactly.
    assert pairwise_distance_w1(x, x + 3.0, generator=torch.Generator().manual_seed(4)) == pytest.approx(0, abs=1e-6)
