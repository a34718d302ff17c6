"""The training loop and EMA: a short run must learn, and the EMA must average as its half-life says."""

import pytest
import torch

from diffbook.data.toy2d import sample_toy
from diffbook.diffusion import DDPM, EDM, Denoiser, karras_sigmas
from diffbook.metrics import sliced_wasserstein
from diffbook.nets.mlp import TimeMLP
from diffbook.objectives import DenoisingLoss
from diffbook.runtime.progress import progress_bar
from diffbook.samplers import ddim_sample, edm_sample
from diffbook.train import EMA, ema_decay, infinite_batches, train


def _sample(model, noise):
    if isinstance(model.process, DDPM):
        return ddim_sample(model, model.process, noise, 50).samples
    return edm_sample(model, noise, karras_sigmas(25, model.process.sigma_min, model.process.sigma_max)).samples


@pytest.mark.parametrize("process", [DDPM(), EDM(sigma_data=1.0)], ids=["ddpm-eps", "edm"])
def test_short_training_lowers_the_loss_and_moves_samples_to_the_data(process):
    torch.manual_seed(0)
    model = Denoiser(TimeMLP(), process)
    data = sample_toy("two_moons", 4096, seed=0)
    reference = sample_toy("two_moons", 2000, seed=1)
    noise = torch.randn(2000, 2, generator=torch.Generator().manual_seed(2))

    def distance():
        return sliced_wasserstein(_sample(model, noise), reference, generator=torch.Generator().manual_seed(0))

    before = distance()
    result = train(model, DenoisingLoss(), data, steps=800, batch_size=256, lr=2e-3, progress=False)
    after = distance()
    assert len(result.losses) == 800
    assert sum(result.losses[-100:]) < 0.95 * sum(result.losses[:100])
    # Untrained samples are noise (or worse); trained ones sit near the moons: at least 3x closer and < 0.25.
    assert after < before / 3 and after < 0.25, (before, after)


def test_ema_decay_is_set_by_half_life_in_images():
    assert ema_decay(500_000, 512) == pytest.approx(0.5 ** (512 / 500_000))
    # The same half-life in images means the same forgetting per image, whatever the batch size.
    assert ema_decay(1000, 10) ** 100 == pytest.approx(ema_decay(1000, 100) ** 10)
    with pytest.raises(ValueError):
        ema_decay(0, 8)


def test_the_ema_ramp_up_is_edms():
    # EDM's training loop: half-life = min(half-life, ratio * images seen before the step); 0.5 ** (B / half-life).
    assert ema_decay(500_000, 512, images_seen=0, rampup_ratio=0.05) == 0.0
    assert ema_decay(500_000, 512, 51_200, 0.05) == pytest.approx(0.5 ** (512 / 2_560))
    assert ema_decay(500_000, 512, 10**9, 0.05) == ema_decay(500_000, 512)


@pytest.mark.parametrize("rampup", [None, 0.05])
def test_with_a_ramp_up_the_average_starts_as_the_live_weights(rampup):
    from diffbook.train import TrainConfig, Trainer

    torch.manual_seed(0)
    model = Denoiser(TimeMLP(hidden=16), EDM())
    config = TrainConfig(steps=1, batch_size=8, lr=1e-2, ema_halflife_images=100, ema_rampup_ratio=rampup)
    trainer = Trainer(model, DenoisingLoss(), torch.randn(16, 2), config, None, progress=False)
    trainer.fit()
    same = all(torch.equal(a, b) for a, b in zip(trainer.ema.model.parameters(), model.parameters(), strict=True))
    assert same == (rampup is not None)


def test_ema_is_the_exponentially_weighted_average_of_the_iterates():
    model = torch.nn.Linear(1, 1, bias=False)
    ema = EMA(model, decay=0.9)
    start = model.weight.item()
    for value in (1.0, 2.0, 3.0):
        model.weight.data.fill_(value)
        ema.update(model)
    expected = 0.9**3 * start + 0.1 * (0.9**2 * 1 + 0.9 * 2 + 3)
    assert ema.model.weight.item() == pytest.approx(expected)
    assert not ema.model.weight.requires_grad


def test_training_returns_the_ema_model_and_warms_up():
    model = Denoiser(TimeMLP(hidden=16), EDM())
    result = train(
        model,
        DenoisingLoss(),
        torch.randn(64, 2),
        steps=5,
        batch_size=16,
        lr=1e-3,
        ema_halflife_images=100,
        warmup_steps=10,
        progress=False,
    )
    assert isinstance(result.ema, Denoiser) and result.ema is not model
    assert len(result.smoothed(window=3)) == 3


def test_infinite_batches_cover_every_row_once_per_epoch():
    data = torch.arange(12.0)[:, None]
    batches = infinite_batches(data, 4, torch.Generator().manual_seed(0))
    epoch = torch.cat([next(batches) for _ in range(3)])
    assert sorted(epoch.flatten().tolist()) == list(range(12))


def test_a_non_finite_loss_stops_training_with_a_clear_message():
    def exploding(model, batch):
        return {"loss": model.net.out.weight.sum() * float("nan")}

    with pytest.raises(FloatingPointError, match="step 0"):
        train(
            Denoiser(TimeMLP(hidden=8), EDM()),
            exploding,
            torch.randn(8, 2),
            steps=3,
            batch_size=4,
            lr=1e-3,
            progress=False,
        )


@pytest.mark.parametrize(("env", "enabled", "disabled"), [("", True, False), ("1", True, True), ("", False, True)])
def test_progress_bars_honour_tqdm_disable(monkeypatch, env, enabled, disabled):
    monkeypatch.setenv("TQDM_DISABLE", env)
    with progress_bar(range(3), enabled=enabled) as bar:
        assert bar.disable is disabled
