"""SADM's structure-guided adversarial objective: known answers for the structure, the game and the two players."""

import math

import pytest
import torch
from identical import assert_same_checkpoint
from torch import nn

from diffbook.diffusion import EDM, Denoiser
from diffbook.experiments import Experiment
from diffbook.nets.mlp import TimeMLP
from diffbook.objectives import DenoisingLoss, SADMLoss, structural_distance, structure_encoder
from diffbook.objectives.sadm import StructureEncoder, batch_structure, pair_weights
from diffbook.train import TrainConfig, Trainer, load_checkpoint

POINTS = torch.randn(12, 2, generator=torch.Generator().manual_seed(0))


def _encoder(seed: int = 0, dim: int = 2) -> StructureEncoder:
    torch.manual_seed(seed)
    return structure_encoder("points", (dim,), width=16, feature_dim=4)


class FixedPrediction:
    """A base objective without noise: ``x0_pred = predict(x0)``, ``sigma`` given, loss 0."""

    def __init__(self, predict, sigma: torch.Tensor | None = None) -> None:
        self.predict, self.sigma = predict, sigma

    def __call__(self, model, batch, generator=None):
        sigma = self.sigma if self.sigma is not None else torch.ones(len(batch))
        x0_pred = self.predict(batch)
        return {"loss": x0_pred.sum() * 0, "x0_pred": x0_pred, "sigma": sigma}


def _linear_encoder(w: float) -> StructureEncoder:
    """``h(x) = normalise(diag(1, w) x)``: blind to the second coordinate at ``w = 0``."""
    linear = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        linear.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, w]]))
    return StructureEncoder(linear)


@pytest.mark.parametrize("affinity", ["cosine", "euclidean"])
@pytest.mark.parametrize("mismatch", ["l1", "l2"])
def test_the_distance_is_zero_for_a_perfect_prediction_and_invariant_to_a_joint_permutation(affinity, mismatch):
    loss = SADMLoss(_encoder(), affinity=affinity, mismatch=mismatch, gate=1.5, weighting="snr")
    sigma = torch.linspace(0.1, 3.0, len(POINTS))
    predicted = POINTS + 0.3 * torch.randn(POINTS.shape, generator=torch.Generator().manual_seed(1))
    assert loss.structure(POINTS, POINTS, sigma) == 0
    order = torch.randperm(len(POINTS), generator=torch.Generator().manual_seed(2))
    value = loss.structure(POINTS, predicted, sigma)
    assert value > 0
    torch.testing.assert_close(loss.structure(POINTS[order], predicted[order], sigma[order]), value)


def test_encoder_outputs_are_unit_norm_and_the_point_encoder_is_1_lipschitz_before_normalising():
    encoder = _encoder()
    for _ in range(30):  # the power iteration of the spectral norm settles in training mode
        encoder(POINTS)
    encoder.eval()
    torch.testing.assert_close(encoder(POINTS).norm(dim=1), torch.ones(len(POINTS)))
    x, y = torch.randn(2, 500, 2, generator=torch.Generator().manual_seed(3))
    ratio = (encoder.body(x) - encoder.body(y)).norm(dim=1) / (x - y).norm(dim=1)
    assert ratio.max() <= 1.0 + 1e-3
    for shape, kind in [((1, 16, 16), "images"), ((4, 32, 32), "latents")]:
        features = structure_encoder(kind, shape)(torch.randn(3, *shape))
        torch.testing.assert_close(features.norm(dim=1), torch.ones(3))


@pytest.mark.parametrize("mismatch", ["l1", "l2"])
def test_the_discriminators_gradient_vanishes_when_the_generator_is_perfect(mismatch):
    loss = SADMLoss(_encoder(), mismatch=mismatch, base=FixedPrediction(lambda x: x.clone()))
    out = loss.adversary_loss(None, POINTS)
    out["loss"].backward()
    assert out["structure"] == 0
    assert all(torch.count_nonzero(p.grad) == 0 for p in loss.encoder.parameters())


def test_a_linear_encoder_on_two_points_gives_the_games_signs_and_optima():
    real = torch.tensor([[1.0, 1.0], [1.0, -1.0]])
    # The prediction collapsed to the mean direction: S(real) = (1 - w^2) / (1 + w^2), S(pred) = 1.
    for w in (0.0, 0.5, 2.0):
        loss = SADMLoss(_linear_encoder(w), base=FixedPrediction(lambda x: torch.tensor([[1.0, 0.0], [1.0, 0.0]])))
        out = loss.adversary_loss(None, real)
        torch.testing.assert_close(out["structure"], torch.tensor(2 * w**2 / (1 + w**2)))
        out["loss"].backward()  # the encoder descends -L: the gradient on w is -dL/dw = -4w / (1 + w^2)^2
        grad_w = loss.encoder.body.weight.grad[1, 1]
        torch.testing.assert_close(grad_w, torch.tensor(-4 * w / (1 + w**2) ** 2))
    # The encoder's best response looks where the prediction is wrong; the denoiser then spreads its predictions:
    # at w = 1, predictions (1, +-e) give L = (1 - e^2) / (1 + e^2), falling to 0 at e = 1, the real points.
    for e, expected_grad in [(0.5, -4 * 0.5 / (1 + 0.25) ** 2), (1.0, 0.0)]:
        spread = torch.tensor(e, requires_grad=True)
        predicted = real * torch.stack([torch.ones(()), spread])
        structure = SADMLoss(_linear_encoder(1.0)).structure(real, predicted, torch.ones(2))
        structure.backward()
        torch.testing.assert_close(structure, torch.tensor((1 - e**2) / (1 + e**2)))
        torch.testing.assert_close(spread.grad, torch.tensor(expected_grad))


def test_pair_weights_gate_and_weight_by_the_signal_fraction():
    sigma = torch.tensor([0.0, 1.0, 3.0, math.inf])
    weights = pair_weights(sigma, gate=2.0, weighting="snr")
    w = torch.tensor([1.0, 0.5, 0.0, 0.0])
    torch.testing.assert_close(weights, torch.triu(w[:, None] * w[None, :], diagonal=1))
    # No pair under the gate: a zero loss with zero, finite gradients.
    loss = SADMLoss(_encoder(), gate=0.5)
    predicted = (POINTS * 2).requires_grad_()
    structure = loss.structure(POINTS, predicted, torch.full((len(POINTS),), 2.0))
    structure.backward()
    assert structure == 0 and torch.count_nonzero(predicted.grad) == 0


def test_cosine_and_euclidean_affinities_have_their_closed_forms():
    features = nn.functional.normalize(torch.randn(5, 3, generator=torch.Generator().manual_seed(4)), dim=1)
    i, j = 1, 3
    torch.testing.assert_close(batch_structure(features)[i, j], features[i] @ features[j])
    torch.testing.assert_close(batch_structure(features, "euclidean")[i, j], (features[i] - features[j]).norm())
    with pytest.raises(ValueError, match="affinity must be one of"):
        structural_distance(features, features, affinity="manhattan")


def test_at_weight_zero_the_loss_is_the_denoising_loss_bit_for_bit():
    torch.manual_seed(0)
    model = Denoiser(TimeMLP(hidden=16), EDM())
    base = DenoisingLoss()(model, POINTS, torch.Generator().manual_seed(5))["loss"]
    out = SADMLoss(_encoder(), weight=0.0)(model, POINTS, torch.Generator().manual_seed(5))
    assert torch.equal(out["loss"], base) and "structure" not in out
    out = SADMLoss(_encoder(), weight=0.3)(model, POINTS, torch.Generator().manual_seed(5))
    torch.testing.assert_close(out["loss"], base + 0.3 * out["structure"])


def _toy_config(**overrides) -> TrainConfig:
    settings = dict(steps=6, batch_size=8, lr=1e-2, warmup_steps=2, grad_clip=1.0, log_every=3, checkpoint_every=3)
    return TrainConfig(**settings | overrides)


def _toy_players(seed: int = 0) -> tuple[Denoiser, SADMLoss]:
    torch.manual_seed(seed)
    model = Denoiser(TimeMLP(hidden=16), EDM(sigma_data=1.0))
    return model, SADMLoss(_encoder(seed), weight=1.0, adversary_lr=1e-2, adversary_steps=2)


def test_both_players_change_in_a_step_and_frozen_parts_stay_frozen():
    model, objective = _toy_players()
    model.net.layers[0].requires_grad_(False)  # a frozen part of each player
    objective.encoder.body[0].parametrizations.weight.original.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()} | {
        f"encoder.{k}": v.clone() for k, v in objective.encoder.state_dict().items()
    }
    result = Trainer(model, objective, POINTS, _toy_config(steps=1, log_every=1), None, progress=False).fit()
    after = model.state_dict() | {f"encoder.{k}": v for k, v in objective.encoder.state_dict().items()}
    changed = {key for key in before if not torch.equal(before[key], after[key])}
    assert "net.layers.1.weight" in changed and "encoder.body.2.parametrizations.weight.original" in changed
    frozen = {"net.layers.0.weight", "net.layers.0.bias", "encoder.body.0.parametrizations.weight.original"}
    assert not changed & frozen
    assert not objective.encoder.body[0].parametrizations.weight.original.requires_grad  # flags restored
    assert objective.encoder.body[2].parametrizations.weight.original.requires_grad
    assert len(result.losses) == len(result.adversary_losses) == 1 and result.adversary_losses[0] <= 0


class WatchedGame:
    """A two-player objective that records what the adversary looks like while each player's loss runs."""

    def __init__(self) -> None:
        self.adversary, self.adversary_lr, self.adversary_steps = nn.Linear(2, 2), 1e-2, 1
        self.seen: list[tuple[str, bool, bool]] = []

    def _look(self, player: str) -> None:
        trainable = any(p.requires_grad for p in self.adversary.parameters())
        self.seen.append((player, trainable, self.adversary.training))

    def __call__(self, model, batch):
        self._look("model")
        return {"loss": (model(batch, 1.0) - self.adversary(batch)).square().mean()}

    def adversary_loss(self, model, batch):
        self._look("adversary")
        with torch.no_grad():
            prediction = model(batch, 1.0)
        return {"loss": -(prediction - self.adversary(batch)).square().mean()}


def test_the_adversary_steps_first_and_is_frozen_while_the_model_steps():
    game = WatchedGame()
    model = Denoiser(TimeMLP(hidden=16), EDM())
    Trainer(model, game, POINTS, _toy_config(steps=2), None, progress=False).fit()
    assert game.seen == [("adversary", True, True), ("model", False, False)] * 2
    assert all(p.grad is not None for p in game.adversary.parameters())


def test_a_resumed_two_player_run_restores_both_players_and_optimizers_exactly(tmp_path):
    model, objective = _toy_players()
    Trainer(model, objective, POINTS, _toy_config(), tmp_path / "straight", progress=False).fit()
    model, objective = _toy_players()
    Trainer(model, objective, POINTS, _toy_config(steps=3), tmp_path / "resumed", progress=False).fit()
    model, objective = _toy_players(seed=1)  # other initial weights: the checkpoint must restore all of it
    torch.manual_seed(7)
    Trainer(model, objective, POINTS, _toy_config(), tmp_path / "resumed", progress=False).fit()
    straight, resumed = (load_checkpoint(tmp_path / name / "checkpoint.pt") for name in ("straight", "resumed"))
    assert_same_checkpoint(straight, resumed)
    assert set(straight["adversary"]) == {"module", "optimizer", "grad_scaler"}
    assert straight["adversary"]["optimizer"]["state"], "the adversary's AdamW moments are saved"


def test_a_run_refuses_a_checkpoint_without_the_adversary_its_objective_has(tmp_path):
    torch.manual_seed(0)
    model = Denoiser(TimeMLP(hidden=16), EDM())
    Trainer(model, DenoisingLoss(), POINTS, _toy_config(steps=3), tmp_path, progress=False).fit()
    model, objective = _toy_players()
    with pytest.raises(ValueError, match="has no adversary"):
        Trainer(model, objective, POINTS, _toy_config(), tmp_path, progress=False).fit()


def test_the_config_builds_each_encoder_and_refuses_bad_knobs():
    cfg = Experiment.load("toy/edm", ["objective.kind=sadm", "objective.gate=0.5", "objective.mismatch=l2"])
    objective = cfg.build_objective(cfg.build_model())
    assert isinstance(objective, SADMLoss) and objective.gate == 0.5 and objective.mismatch == "l2"
    assert objective.encoder(POINTS).shape == (len(POINTS), 16)
    cfg = Experiment.load("digits/edm", ["objective.kind=sadm", "objective.feature_dim=8"])
    assert cfg.build_objective(cfg.build_model()).encoder(torch.randn(2, 1, 16, 16)).shape == (2, 8)
    for override, message in [
        ("objective.affinity=angular", "affinity must be one of"),
        ("objective.weight=-1", "weight"),
        ("objective.encoder=latents", "does not take samples of shape"),
        ("objective.base=vlb", "objective.base.kind must be one of"),
    ]:
        with pytest.raises(ValueError, match=message):
            cfg = Experiment.load("toy/edm", ["objective.kind=sadm", override])
            cfg.build_objective(cfg.build_model())
    with pytest.raises(ValueError, match="unknown config key 'objective.lambda'"):
        Experiment.load("toy/edm", ["objective.kind=sadm", "objective.lambda=1"])


def test_the_imagenet_512_config_is_the_256_one_at_64_by_64_latents():
    from diffbook.config import read_config
    from diffbook.experiments import Experiment

    at_256, at_512 = read_config("imagenet256/sadm"), read_config("imagenet512/sadm")
    differ = {
        section: {
            k
            for k in at_256[section].keys() | at_512[section].keys()
            if at_256[section].get(k) != at_512[section].get(k)
        }
        for section in ("data", "network", "objective", "train", "sample")
    }
    assert differ == {
        "data": {"root"},
        "network": {"overrides", "init_from"},
        "objective": set(),
        "train": set(),
        "sample": set(),
    }
    experiment = Experiment.from_config(at_512)
    with torch.device("meta"):
        net = experiment.build_model().net
    assert experiment.sample_shape == (4, 64, 64) and net.pos_embed.shape[0] == (64 // 2) ** 2
    assert sum(p.numel() for p in net.parameters()) / 1e6 == pytest.approx(675.7, abs=1.0)  # DiT-XL/2 (Table 1: 675 M)
