"""Caption dropout in the Stable Diffusion fine-tunes: a caption is replaced by the empty prompt, the null condition
that guidance samples with, with probability p, drawn per example from the objective's generator.

Known answers: p = 0 changes nothing and draws nothing; p = 1 gives the empty prompt's hidden states everywhere; the
dropped fraction of many examples is within a binomial bound of p; one seed gives one mask; the self-perceptual
loss's frozen network sees the condition the online network sees.
"""

import math

import pytest
import torch
from test_self_perceptual import _tiny_stable_diffusion
from torch import nn

from diffbook.data.captions import load_tokenizer, tokenize
from diffbook.experiments import Experiment
from diffbook.objectives import LatentTextObjective


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    root = tmp_path_factory.mktemp("sd")
    _tiny_stable_diffusion(root)
    return root


def _objective(weights, caption_dropout: float, base: str = "denoising") -> LatentTextObjective:
    overrides = [f"network.weights={weights}", f"objective.caption_dropout={caption_dropout}"]
    if base != "denoising":
        overrides += ["objective.base={kind: self_perceptual}", "network.overrides.unet=null"]
    experiment = Experiment.load(f"sd21/{'mse' if base == 'denoising' else 'self_perceptual'}", overrides)
    model = experiment.build_model() if base != "denoising" else None
    objective = experiment.build_objective(model)
    assert isinstance(objective, LatentTextObjective)
    return objective


def _tokens(weights, n: int):
    captions = ["a red square", "a blue square"] * (n // 2)
    return tokenize(load_tokenizer(weights / "tokenizer"), captions)


class _Recorder:
    """A base objective that keeps the batch it was given."""

    def __call__(self, model, batch, generator=None):
        self.batch = batch
        return {"loss": torch.zeros(())}


class _Spy(nn.Module):
    """``net`` that keeps the condition of every call."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net, self.conditions = net, []

    def forward(self, x, noise_labels, condition):
        self.conditions.append(condition)
        return self.net(x, noise_labels, condition)


def _conditions(objective: LatentTextObjective, tokens, seed: int = 0):
    objective.base = recorder = _Recorder()
    pixels = torch.zeros(tokens.shape[0], 3, 16, 16)
    objective(None, (pixels, tokens), torch.Generator().manual_seed(seed))
    return recorder.batch[1]


def _empty_prompt_states(weights):
    from diffbook.objectives.latent_text import load_text_encoder

    with torch.no_grad():
        return load_text_encoder(str(weights))(tokenize(load_tokenizer(weights / "tokenizer"), [""]))[0]


def test_the_configs_drop_captions_at_stable_diffusions_rate_and_say_it_is_unstated():
    for name in ("sd21/mse", "sd21/self_perceptual"):
        experiment = Experiment.load(name)
        assert experiment.config["objective"]["caption_dropout"] == 0.1
        assert "unstated; 10% as" in experiment.config["source"]


def test_probability_zero_changes_nothing_and_draws_nothing(weights):
    objective = _objective(weights, 0.0)
    tokens = _tokens(weights, 4)
    generator = torch.Generator().manual_seed(0)
    assert objective.drop_captions(tokens, generator) is tokens
    assert torch.equal(generator.get_state(), torch.Generator().manual_seed(0).get_state())


def test_probability_one_gives_the_empty_prompts_hidden_states_everywhere(weights):
    tokens = _tokens(weights, 4)
    text = _conditions(_objective(weights, 1.0), tokens)
    null = _empty_prompt_states(weights)
    assert text.shape == (4, *null.shape[1:])
    torch.testing.assert_close(text, null.expand_as(text), rtol=0, atol=1e-6)
    kept = _conditions(_objective(weights, 0.0), tokens)
    assert not torch.allclose(kept, null.expand_as(kept))


def test_the_dropped_fraction_is_within_a_binomial_bound_and_one_seed_gives_one_mask(weights):
    p, n = 0.1, 20000
    objective = _objective(weights, p)
    tokens = _tokens(weights, n)
    null = objective.null_tokens
    dropped = (objective.drop_captions(tokens, torch.Generator().manual_seed(3)) == null).all(dim=1)
    assert not (tokens == null).all(dim=1).any()  # every drop is the objective's doing
    assert abs(dropped.float().mean().item() - p) < 5 * math.sqrt(p * (1 - p) / n)
    again = (objective.drop_captions(tokens, torch.Generator().manual_seed(3)) == null).all(dim=1)
    other = (objective.drop_captions(tokens, torch.Generator().manual_seed(4)) == null).all(dim=1)
    assert torch.equal(dropped, again) and not torch.equal(dropped, other)


def test_the_frozen_network_sees_the_condition_the_online_network_sees(weights):
    objective = _objective(weights, 0.5, base="self_perceptual")
    objective.base.frozen = frozen = _Spy(objective.base.frozen)
    model = Experiment.load("sd21/self_perceptual", [f"network.weights={weights}", "network.overrides.unet=null"])
    model = model.build_model()
    model.net = online_net = _Spy(model.net)
    tokens = _tokens(weights, 4)
    objective(model, (torch.rand(4, 3, 16, 16) * 2 - 1, tokens), torch.Generator().manual_seed(1))
    (online,), (real, predicted) = online_net.conditions, frozen.conditions
    assert torch.equal(online, real) and torch.equal(online, predicted)
    null = _empty_prompt_states(weights)[0]
    dropped = [torch.allclose(c, null, atol=1e-6) for c in online]
    assert any(dropped) and not all(dropped)
    assert (
        dropped
        == (objective.drop_captions(tokens, torch.Generator().manual_seed(1)) == objective.null_tokens)
        .all(dim=1)
        .tolist()
    )


def test_a_bad_rate_or_a_label_dropout_on_the_base_is_a_clear_error(weights):
    with pytest.raises(ValueError, match=r"caption_dropout must be in \[0, 1\]"):
        Experiment.load("sd21/mse", ["objective.caption_dropout=1.5"])
    with pytest.raises(ValueError, match="set objective.caption_dropout instead"):
        Experiment.load("sd21/mse", ["objective.base={kind: denoising, label_dropout: 0.1}"])
