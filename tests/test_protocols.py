"""ADM's evaluator and EDM's FID on TF-Inception: the network's layout, its preprocessing, the five numbers, the
reference ``.npz`` and ``evaluate --protocol``; offline, with a randomly initialised network of the real shape."""

import json

import numpy as np
import pytest
import torch
from torch import nn

from diffbook.cli import main
from diffbook.metrics import feature_statistics, frechet_distance, inception_score, prdc
from diffbook.metrics.protocols import (
    adm_inception_score,
    adm_metrics,
    adm_precision_recall,
    batch_statistics,
    edm_fid,
    read_reference_batch,
    read_samples,
    reference_statistics,
    tf_inception_features,
    write_reference_batch,
)
from diffbook.metrics.tf_inception import (
    TF_INCEPTION_FILE,
    TF_INCEPTION_URL,
    TFInceptionV3,
    load_tf_inception,
    tf_resize_bilinear,
)
from diffbook.runtime.files import CheckpointError


def _random_inception(seed: int = 0) -> TFInceptionV3:
    """The real architecture with He-initialised weights, so that features stay O(1) through its 94 layers."""
    torch.manual_seed(seed)
    net = TFInceptionV3()
    for module in net.modules():
        if isinstance(module, nn.Conv2d | nn.Linear):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    net.fc.weight.data *= 10  # confident predictions, so that the Inception score is well above 1
    return net.eval()


@pytest.fixture(scope="module")
def net() -> TFInceptionV3:
    return _random_inception()


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory, net):
    path = tmp_path_factory.mktemp("weights") / TF_INCEPTION_FILE
    torch.save(net.state_dict(), path)
    return path


class StandInFeatures(nn.Module):
    """TF-Inception's interface at a small size: (B, 3, H, W) uint8 -> pool (B, 16), spatial (B, 12), logits (B, 10).

    FID on 2048-d features needs a 2048 x 2048 matrix square root, about a minute on two CPU cores; the protocols'
    arithmetic is the same at any feature size, so it is checked here."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 16, kernel_size=3)
        self.to_spatial = nn.Conv2d(16, 3, kernel_size=1)
        self.fc = nn.Linear(16, 10)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        x = torch.relu(self.conv((images.float() - 128) / 128))
        pool = x.mean(dim=(2, 3))
        spatial = self.to_spatial(x)[:, :, :2, :2].flatten(1)
        return {"pool": pool, "spatial": spatial, "logits": 100 * self.fc(pool)}


@pytest.fixture(scope="module")
def stand_in() -> StandInFeatures:
    return StandInFeatures().eval()


def _images(n: int, seed: int, size: int = 16) -> np.ndarray:
    """``(n, size, size, 3)`` uint8 smooth random images (ADM's layout)."""
    generator = np.random.default_rng(seed)
    coarse = generator.integers(0, 256, (n, 4, 4, 3)).astype(np.uint8)
    return coarse.repeat(size // 4, axis=1).repeat(size // 4, axis=2)


def _nchw(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()


def test_the_state_dict_has_pytorch_fids_keys_and_shapes(net):
    shapes = {key: tuple(value.shape) for key, value in net.state_dict().items()}
    assert shapes["Conv2d_1a_3x3.conv.weight"] == (32, 3, 3, 3)
    assert shapes["Conv2d_4a_3x3.bn.running_var"] == (192,)
    assert shapes["Mixed_5b.branch_pool.conv.weight"] == (32, 192, 1, 1)
    assert shapes["Mixed_6d.branch1x1.conv.weight"] == (192, 768, 1, 1)
    assert shapes["Mixed_6e.branch7x7dbl_5.conv.weight"] == (192, 192, 1, 7)
    assert shapes["Mixed_7c.branch3x3dbl_3b.conv.weight"] == (384, 384, 3, 1)
    assert shapes["fc.weight"] == (1008, 2048) and shapes["fc.bias"] == (1008,)
    assert not any(key.startswith("AuxLogits") for key in shapes)


def test_the_weights_load_strictly_and_a_missing_key_is_named(tmp_path, net, weights_file):
    loaded = load_tf_inception(weights_file)
    assert torch.equal(loaded.Mixed_7b.branch_pool.conv.weight, net.Mixed_7b.branch_pool.conv.weight)
    state = net.state_dict()
    # Files from older PyTorch have no BatchNorm batch counters; they do not change the forward pass.
    torch.save({k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}, tmp_path / "old.pth")
    load_tf_inception(tmp_path / "old.pth")
    del state["Mixed_6e.branch1x1.bn.running_var"]
    torch.save(state | {"AuxLogits.fc.weight": torch.zeros(1000, 768)}, tmp_path / "broken.pth")
    with pytest.raises(CheckpointError, match=r"1 missing \(Mixed_6e.branch1x1.bn.running_var\).*AuxLogits.fc.weight"):
        load_tf_inception(tmp_path / "broken.pth")


def test_without_weights_the_error_names_the_file_its_url_and_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFBOOK_CACHE", str(tmp_path / "cache"))
    with pytest.raises(FileNotFoundError) as error:
        load_tf_inception()
    message = str(error.value)
    assert TF_INCEPTION_FILE in message and TF_INCEPTION_URL in message and "fetch-inception --pytorch-fid" in message
    assert str(tmp_path / "cache") in message


def test_fetch_refuses_a_file_that_is_not_the_release(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DIFFBOOK_CACHE", str(tmp_path / "cache"))
    (tmp_path / "other.pth").write_bytes(b"not the weights")
    assert main(["fetch-inception", "--pytorch-fid", "--from", str(tmp_path / "other.pth")]) != 0
    assert "not 6726825d..." in capsys.readouterr().err
    assert not (tmp_path / "cache" / TF_INCEPTION_FILE).exists()


def test_the_resize_samples_as_tensorflow_1_does():
    ramp = torch.tensor([0.0, 10.0, 20.0, 30.0]).expand(1, 1, 4, 4)
    # Output pixel i reads input i * 4 / 8; the last one clamps at the edge. torch's half-pixel kernel gives
    # 0, 2.5, 7.5, ... instead.
    expected = torch.tensor([0.0, 5.0, 10.0, 15.0, 20.0, 25.0, 30.0, 30.0])
    resized = tf_resize_bilinear(ramp, 8)
    assert torch.equal(resized[0, 0, 0], expected) and torch.equal(resized[0, 0, :, 0], torch.zeros(8))
    image = torch.rand(1, 3, 5, 7) * 255
    assert torch.equal(tf_resize_bilinear(image, 299)[..., 0, 0], image[..., 0, 0])


def test_spatial_features_are_mixed_6d_1x1_branch_in_tensorflows_hwc_order(net):
    branch, tf32 = [], []
    hooks = [
        net.Mixed_6d.branch1x1.register_forward_hook(lambda module, inputs, output: branch.append(output)),
        net.Conv2d_1a_3x3.register_forward_hook(lambda *_: tf32.append(torch.backends.cudnn.allow_tf32)),
    ]
    allowed = torch.backends.cudnn.allow_tf32
    try:
        with torch.no_grad():
            features = net(_nchw(_images(2, seed=0)))
    finally:
        for hook in hooks:
            hook.remove()
    assert tf32 == [False] and torch.backends.cudnn.allow_tf32 == allowed  # full float32, then as it was
    assert features["spatial"].shape == (2, 17 * 17 * 7)
    assert torch.equal(features["spatial"], branch[0][:, :7].permute(0, 2, 3, 1).reshape(2, -1))
    assert torch.allclose(features["logits"], features["pool"] @ net.fc.weight.T)  # without the bias, as ADM


def test_a_set_against_itself_scores_zero_and_full_precision_and_recall(tmp_path, stand_in):
    images = _images(40, seed=1, size=8)
    write_reference_batch(tmp_path / "ref.npz", images)
    scores = adm_metrics(_nchw(images), tmp_path / "ref.npz", stand_in)
    assert scores["fid"] == pytest.approx(0, abs=1e-9) and scores["sfid"] == pytest.approx(0, abs=1e-9)
    assert scores["precision"] == 1 and scores["recall"] == 1


def test_fid_sfid_and_is_against_a_shifted_set_are_the_closed_forms(tmp_path, stand_in):
    reference = _images(40, seed=2, size=8)
    samples = np.clip(_images(30, seed=3, size=8).astype(int) + 40, 0, 255).astype(np.uint8)
    write_reference_batch(tmp_path / "ref.npz", reference)
    scores = adm_metrics(_nchw(samples), tmp_path / "ref.npz", stand_in)
    with torch.no_grad():
        real, fake = stand_in(_nchw(reference)), stand_in(_nchw(samples))
    for key, name in (("fid", "pool"), ("sfid", "spatial")):
        closed_form = frechet_distance(*feature_statistics(fake[name]), *feature_statistics(real[name]))
        assert scores[key] == pytest.approx(closed_form, rel=1e-9) and closed_form > 0.01
    assert scores["inception_score"] == pytest.approx(inception_score(fake["logits"].softmax(dim=1), splits=1)[0])
    assert scores["inception_score"] > 1.1  # 1 would be one prediction for every sample
    assert (scores["precision"], scores["recall"]) == adm_precision_recall(real["pool"], fake["pool"])


def test_the_real_network_gives_adms_feature_sizes_and_its_inception_score(net):
    features = tf_inception_features(net, _nchw(_images(3, seed=12)), batch_size=2)
    assert {key: tuple(value.shape) for key, value in features.items()} == {
        "pool": (3, 2048),
        "spatial": (3, 2023),
        "logits": (3, 1008),
    }
    score = adm_inception_score(features["logits"])
    assert score == pytest.approx(inception_score(features["logits"].double().softmax(dim=1), splits=1)[0])


def test_adms_inception_score_averages_chunks_of_5000_as_its_evaluator():
    logits = torch.randn(12, 7, generator=torch.Generator().manual_seed(0)) * 3
    probabilities = logits.double().softmax(dim=1).numpy()
    chunk_scores = []
    for part in np.split(probabilities, [5, 10]):  # chunks of 5, 5 and the 2 left over
        kl = part * (np.log(part) - np.log(part.mean(axis=0, keepdims=True)))
        chunk_scores.append(np.exp(kl.sum(axis=1).mean()))
    assert adm_inception_score(logits, split_size=5) == pytest.approx(np.mean(chunk_scores), rel=1e-12)


def _adm_manifold_reference(reference: np.ndarray, samples: np.ndarray, k: int) -> tuple[float, float]:
    """ADM's ManifoldEstimator in plain numpy: squared distances, the k-th (not counting itself) by partition."""

    def squared(a, b):
        return ((a[:, None] - b[None]) ** 2).sum(axis=-1)

    real_radii = np.partition(squared(reference, reference), k, axis=1)[:, k]
    fake_radii = np.partition(squared(samples, samples), k, axis=1)[:, k]
    distances = squared(reference, samples)
    return (distances <= real_radii[:, None]).any(axis=0).mean(), (distances <= fake_radii[None]).any(axis=1).mean()


def test_precision_and_recall_are_adms_manifold_estimate():
    generator = np.random.default_rng(0)
    reference, samples = generator.normal(size=(40, 8)), generator.normal(0.7, 1.3, size=(30, 8))
    precision, recall = adm_precision_recall(reference, samples)
    assert (precision, recall) == pytest.approx(_adm_manifold_reference(reference, samples, k=3))
    assert 0 < precision < 1 and 0 < recall < 1


def test_a_sample_on_a_balls_boundary_counts_as_inside_unlike_prdc():
    reference = np.arange(5.0)[:, None]  # 3rd-neighbour radii 3, 2, 2, 2, 3
    samples = np.array([[7.0], [10.0], [2.5], [3.5]])  # 7 lies at distance 3 from 4: on its ball's boundary
    assert adm_precision_recall(reference, samples) == (0.75, 1.0)
    assert prdc(reference, samples, k=3)["precision"] == 0.5


def test_the_reference_npz_round_trips_in_adms_layout(tmp_path, stand_in):
    images = _images(30, seed=4, size=8)
    features = tf_inception_features(stand_in, _nchw(images), batch_size=7)
    statistics = batch_statistics(features)
    write_reference_batch(tmp_path / "with.npz", images, statistics)
    with np.load(tmp_path / "with.npz") as npz:
        assert sorted(npz.files) == ["arr_0", "mu", "mu_s", "sigma", "sigma_s"]
        assert np.array_equal(npz["arr_0"], images)
    read_features, read_statistics = read_reference_batch(tmp_path / "with.npz", stand_in)
    # Features of other batch sizes may differ in the last bits (the kernels sum in another order).
    for key in features:
        torch.testing.assert_close(read_features[key], features[key], rtol=1e-5, atol=1e-6)
    assert all(np.array_equal(read_statistics[key], statistics[key]) for key in statistics)  # stored: exact
    write_reference_batch(tmp_path / "without.npz", images)
    _, computed = read_reference_batch(tmp_path / "without.npz", stand_in)
    for key in statistics:
        np.testing.assert_allclose(computed[key], statistics[key], rtol=1e-5, atol=1e-6)
    assert statistics["mu_s"].shape == (12,) and statistics["sigma"].shape == (16, 16)


def test_stored_statistics_are_used_as_adms_evaluator_uses_them(tmp_path, stand_in):
    reference, other, samples = (_images(30, seed=seed, size=8) for seed in (5, 6, 7))
    other_statistics = batch_statistics(tf_inception_features(stand_in, _nchw(other)))
    write_reference_batch(tmp_path / "ref.npz", reference, other_statistics)
    fake = tf_inception_features(stand_in, _nchw(samples))
    scores = adm_metrics(_nchw(samples), tmp_path / "ref.npz", stand_in)
    expected = frechet_distance(*feature_statistics(fake["pool"]), other_statistics["mu"], other_statistics["sigma"])
    assert scores["fid"] == pytest.approx(expected, rel=1e-9)
    _, computed = read_reference_batch(tmp_path / "ref.npz", stand_in)
    assert np.array_equal(computed["mu"], other_statistics["mu"])


def test_edm_fid_against_statistics_from_an_npz_or_a_dataset(tmp_path, stand_in, monkeypatch):
    reference, samples = _nchw(_images(30, seed=8, size=8)), _nchw(_images(30, seed=13, size=8))
    mu, sigma = feature_statistics(tf_inception_features(stand_in, reference)["pool"])
    np.savez(tmp_path / "stats.npz", mu=mu, sigma=sigma)
    read_mu, read_sigma = reference_statistics(tmp_path / "stats.npz", stand_in, resolution=8)
    assert np.array_equal(read_mu, mu) and np.array_equal(read_sigma, sigma)
    asked = []
    monkeypatch.setattr("diffbook.metrics.protocols.load_reference", lambda *args: asked.append(args) or reference)
    from_dataset = reference_statistics("cifar10", stand_in, resolution=8, root=tmp_path)
    assert asked == [("cifar10", 8, 3, tmp_path, "train")]
    assert np.array_equal(from_dataset[0], mu) and np.array_equal(from_dataset[1], sigma)
    expected = frechet_distance(*feature_statistics(tf_inception_features(stand_in, samples)["pool"]), mu, sigma)
    assert edm_fid(samples, (mu, sigma), stand_in) == pytest.approx(expected, rel=1e-9) and expected > 0.01


def test_samples_are_read_from_an_npz_file_or_a_folder(tmp_path):
    images = _images(3, seed=9)
    np.savez(tmp_path / "samples.npz", arr_0=images, arr_1=np.arange(3))
    assert torch.equal(read_samples(tmp_path / "samples.npz"), _nchw(images))
    assert torch.equal(read_samples(tmp_path), _nchw(images))
    np.savez(tmp_path / "labels.npz", arr_1=np.arange(3))
    with pytest.raises(ValueError, match="not arr_0"):
        read_samples(tmp_path / "labels.npz")


def _mean_term(mu1, sigma1, mu2, sigma2) -> float:
    """FID's first term, ``|mu1 - mu2|^2``: cheap at 2048-d, and it shows which statistics reached it."""
    return float(((mu1 - mu2) ** 2).sum())


def _sample_four_images(tmp_path) -> np.ndarray:
    """``python -m diffbook sample`` of 4 seeds from a tiny random CIFAR-10 EDM network; its ``samples.npz``."""
    from diffbook.experiments import Experiment

    tiny = "{model_channels: 16, channel_mult: [1, 2], num_blocks: 1, attn_resolutions: [16], init_zero: false}"
    experiment = Experiment.load("cifar10/edm", [f"network.overrides={tiny}", "sample.steps=2"])
    torch.manual_seed(0)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text(experiment.to_yaml())
    state = {"model": experiment.build_model().state_dict(), "ema": None, "step": 0}
    torch.save(state, tmp_path / "run" / "checkpoint.pt")
    sample = ["sample", "--ckpt", str(tmp_path / "run" / "checkpoint.pt"), "--seeds", "0-3", "--out", str(tmp_path)]
    assert main(sample) == 0
    return np.load(tmp_path / "samples.npz")["arr_0"]


def test_evaluate_protocol_adm_and_edm_end_to_end(tmp_path, capsys, monkeypatch, weights_file):
    # Through the real network from a weights file; FID's arithmetic is tested on the stand-in above.
    samples = _sample_four_images(tmp_path)
    capsys.readouterr()
    monkeypatch.setattr("diffbook.metrics.protocols.frechet_distance", _mean_term)
    reference = _images(4, seed=11, size=32)
    write_reference_batch(tmp_path / "ref.npz", reference)
    common = ["evaluate", "--samples", str(tmp_path / "samples.npz"), "--inception-weights", str(weights_file)]
    assert main([*common, "--protocol", "adm", "--ref", str(tmp_path / "ref.npz")]) == 0
    report = json.loads((tmp_path / "metrics-adm.json").read_text())
    assert report["protocol"] == "adm" and report["features"] == "tf-inception" and report["num_samples"] == 4
    assert json.loads(capsys.readouterr().out.split("Saved")[0]) == report["metrics"]
    net = load_tf_inception(weights_file)
    fake, real = (tf_inception_features(net, _nchw(images)) for images in (samples, reference))
    expected = {
        "fid": _mean_term(fake["pool"].double().mean(0), None, real["pool"].double().mean(0), None),
        "sfid": _mean_term(fake["spatial"].double().mean(0), None, real["spatial"].double().mean(0), None),
        "inception_score": adm_inception_score(fake["logits"]),
    }
    assert {key: report["metrics"][key] for key in expected} == pytest.approx(expected, rel=1e-4)
    assert (report["metrics"]["precision"], report["metrics"]["recall"]) == adm_precision_recall(
        real["pool"], fake["pool"]
    )

    np.savez(tmp_path / "stats.npz", mu=np.zeros(2048), sigma=np.eye(2048))
    out = tmp_path / "edm.json"
    assert main([*common, "--protocol", "edm", "--ref", str(tmp_path / "stats.npz"), "--out", str(out)]) == 0
    fid = json.loads(out.read_text())["metrics"]["fid"]
    assert fid == pytest.approx(float((fake["pool"].double().mean(0) ** 2).sum()), rel=1e-4)


def test_evaluate_protocol_adm_needs_a_reference_batch(tmp_path, capsys, weights_file):
    np.savez(tmp_path / "samples.npz", arr_0=_images(4, seed=14))
    argv = ["evaluate", "--protocol", "adm", "--samples", str(tmp_path / "samples.npz"), "--ref", "imagenet"]
    assert main([*argv, "--inception-weights", str(weights_file)]) != 0
    assert "--protocol adm compares with a reference batch .npz" in capsys.readouterr().err
