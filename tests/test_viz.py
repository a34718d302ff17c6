"""The chapters' figures that compute something: the sampler-path animation (its data are the trajectories
themselves, paths of different lengths play in step, bad input is a clear error; that it plays in the built book is
test_browser's) and the nearest-neighbour balls, which count precision and recall as the metric does."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from diffbook.viz.animation import SIZE, _frame_indices, animate_paths


def _data(page: str) -> dict:
    return json.loads(re.search(r'<script type="application/json">(.*?)</script>', page).group(1))


def _trajectory(steps: int, seed: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(4, 2, generator=generator) for _ in range(steps)]


def test_each_frame_is_the_trajectory_in_pixels_with_y_up():
    path = [torch.tensor([[0.0, 0.0], [3.5, 3.5], [-3.5, 1.75]]), torch.tensor([[1.0, -1.0], [0, 0], [0, 0]])]
    data = _data(animate_paths({"ODE": path}, lim=3.5))
    assert data["frames"] == 2 and len(data["panels"]) == 1
    first, last = data["panels"][0]["frames"]
    half = SIZE / 2
    assert first == [[half, half], [SIZE, 0.0], [0.0, half / 2]]  # the corner (3.5, 3.5) is the top right
    assert last[0] == pytest.approx([half + half / 3.5, half + half / 3.5], abs=0.05)


def test_paths_of_different_lengths_play_in_step():
    assert _frame_indices(3, 5) == [0, 0, 1, 2, 2] and _frame_indices(51, 51) == list(range(51))
    ode, sde = _trajectory(11, seed=0), _trajectory(51, seed=1)
    page = animate_paths({"Heun": ode, "DDPM": sde})
    data = _data(page)
    assert data["frames"] == 51
    heun = np.array(data["panels"][0]["frames"])
    assert heun.shape == (51, 4, 2)
    # Halfway through the animation the 11-state path is at its state 5, the 51-state one at 25.
    expected = (ode[5].numpy() + 3.5) * SIZE / 7
    np.testing.assert_allclose(heun[25, :, 0], expected[:, 0], atol=0.05)
    assert page.count("<svg") == 2 and ">Heun</figcaption>" in page and ">DDPM</figcaption>" in page


def test_two_animations_on_one_page_do_not_share_ids():
    first, second = (animate_paths({"a": _trajectory(3, seed)}) for seed in (0, 1))
    ids = [re.search(r'id="(diffbook-animation-[0-9a-f]+)"', page).group(1) for page in (first, second)]
    assert ids[0] != ids[1] and f'getElementById("{ids[1]}")' in second


def test_bad_paths_are_clear_errors():
    with pytest.raises(ValueError, match="at least one path"):
        animate_paths({})
    with pytest.raises(ValueError, match="at least two states"):
        animate_paths({"a": _trajectory(1, 0)})
    with pytest.raises(ValueError, match=r"must be \(B, 2\)"):
        animate_paths({"a": [torch.zeros(4, 3), torch.zeros(4, 3)]})


def test_the_balls_drawn_count_precision_and_recall_as_prdc_does():
    import matplotlib

    matplotlib.use("Agg")
    from diffbook.metrics import prdc
    from diffbook.metrics.prdc import neighbour_balls
    from diffbook.viz.plots import knn_balls, new_figure

    generator = torch.Generator().manual_seed(0)
    real, fake = torch.randn(40, 2, generator=generator), 1.5 * torch.randn(30, 2, generator=generator)
    _, _, real_radii, fake_radii = neighbour_balls(real, fake, 3, 2**20)
    _, axes = new_figure(2)
    precision = knn_balls(axes[0, 0], real, real_radii, fake).double().mean().item()
    recall = knn_balls(axes[0, 1], fake, fake_radii, real).double().mean().item()
    scores = prdc(real, fake, k=3)
    assert (precision, recall) == pytest.approx((scores["precision"], scores["recall"]))
    assert len(axes[0, 0].patches) == 40 and 0 < precision < 1


def test_the_moving_parts_place_every_paper_under_the_parts_it_changes():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from diffbook.viz.schematics import PAPER_PARTS, PARTS, draw_moving_parts

    _, ax = plt.subplots()
    under = draw_moving_parts(ax)
    assert list(under) == list(PARTS) == ["process", "network", "objective", "sampler"]
    assert under["objective"] == ["Iso-Diffusion", "BCM", "self-perceptual", "SADM"] and under["network"] == [
        "BCM",
        "DiffiT",
    ]
    assert {paper for papers in under.values() for paper in papers} == set(PAPER_PARTS)
    texts = [text.get_text() for text in ax.texts]
    assert all(part in texts for part in PARTS) and "Iso-Diffusion\nBCM\nself-perceptual\nSADM" in texts
    assert len(ax.patches) == 2 * len(PARTS) - 1  # four boxes, three arrows
    plt.close("all")
