"""The benchmarks of ``make bench``: the package against its peers, on the same work, in one run.

Each function yields :class:`Row` objects, one number of ours against one of a peer's, measured in turns on
the same device, batch and precision (see :mod:`benchmarks.perf.measure`). A row with a target says whether it met
it; a row that did not carries the work to profile.

- :func:`network_rows`: a training step (forward, MSE backward, Adam) of the package's U-Nets and DiT against
  diffusers' models of the same layout (:mod:`benchmarks.perf.peers`), and of the latent DiffiT against the DiT.
- :func:`sampler_rows`: what a sampler costs beyond its network calls, against diffusers' schedulers.
- :func:`loader_rows`: CIFAR-10 training batches per second from files in CIFAR-10's format.
- :func:`evaluation_rows`: features and FID of 10k digits images from PNG folders, against clean-fid.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from benchmarks.perf.measure import (
    Timing,
    count_flops,
    peak_bf16_flops,
    peak_memory_in_turns,
    time_in_turns,
    top_operators,
)
from benchmarks.perf.peers import (
    cleanfid_folder_fid,
    diffusers_dit,
    diffusers_scheduler,
    diffusers_unet,
    dit_embedder_parameters,
    run_scheduler,
    torchvision_cifar10,
    unet_differences,
)
from benchmarks.perf.synthetic import cifar10_checksums, digits_images, patched, random_cifar10, write_png_folder
from diffbook.data import load_image_dataset
from diffbook.data.sources import ImagesOnly
from diffbook.diffusion import DDPM, EDM, Denoiser
from diffbook.nets import UNet, unet_preset
from diffbook.nets.dit import DiT, DiTConfig, dit_preset
from diffbook.nets.latent_diffit import LatentDiffiT, latent_diffit_preset
from diffbook.runtime.precision import AUTOCAST_DTYPES
from diffbook.samplers import DDIMOptions, Sampler
from diffbook.train.batches import EpochBatches


@dataclass(frozen=True)
class Settings:
    """How every network runs, the same for ours and the peer's: device, autocast precision, ``torch.compile``,
    channels-last memory for the convolutional networks, and how many warm-up and timed rounds. ``peak_flops`` is
    the device's peak FLOP/s for model FLOPs utilisation: by default the data sheet's bf16 peak of a listed GPU
    under bf16 or fp16 autocast (:data:`~benchmarks.perf.measure.PEAK_BF16_TFLOPS`), else unknown."""

    device: torch.device = torch.device("cpu")
    precision: str = "fp32"
    compile: bool = False
    channels_last: bool = False
    warmup: int = 1
    rounds: int = 9
    peak_flops: float | None = None

    def __post_init__(self) -> None:
        if self.precision not in AUTOCAST_DTYPES:
            raise ValueError(f"precision must be one of {', '.join(AUTOCAST_DTYPES)}, got {self.precision!r}")

    @property
    def device_peak_flops(self) -> float | None:
        if self.peak_flops is not None:
            return self.peak_flops
        return peak_bf16_flops(self.device) if self.precision in ("bf16", "fp16") else None

    def prepare(self, net: nn.Module, convolutional: bool) -> nn.Module:
        net = net.to(self.device)
        if self.channels_last and convolutional:
            net = net.to(memory_format=torch.channels_last)
        return torch.compile(net) if self.compile else net


@dataclass(frozen=True)
class Scale:
    """How big the work is: batch sizes, the DiT size, sampler batch, loader batches and evaluation images."""

    unet_batch: int
    ddpmpp_batch: int
    dit: str
    dit_batch: int
    sampler_batch: int
    loader_batch: int
    loader_batches: int
    loader_images_per_file: int
    eval_images: int


SCALES = {
    # Two CPU cores, `make bench` in minutes: small batches, DiT-S/2 in place of DiT-XL/2.
    "cpu": Scale(8, 4, "S/2", 4, 16, 128, 20, 10_000, 10_000),
    # One GPU at the configs' own batches (DDPM 128, EDM 512, DiT-XL/2 256 over 8 GPUs).
    "full": Scale(128, 512, "XL/2", 32, 256, 128, 100, 10_000, 10_000),
    # The tests: every path, in seconds.
    "smoke": Scale(2, 2, "digits16", 2, 2, 16, 2, 40, 64),
}


@dataclass
class Row:
    """One comparison, or one measurement of ours alone (``peer`` None). ``ours`` and ``peer`` are in ``unit``;
    lower is better, unless ``higher_is_better``.

    ``target`` bounds ``ours / peer`` (``<= target``, or ``>= target`` when higher is better); ``goal`` is a
    target in words that is not a ratio (a fraction of a network call, say) and ``goal_met`` whether it held.
    ``profile`` is our side's work; :func:`run` profiles it when a target is missed, into ``operators``.
    """

    group: str
    name: str
    setting: str
    unit: str
    ours: float
    peer: float | None = None
    spread: float = 0.0
    higher_is_better: bool = False
    target: float | None = None
    goal: str = ""
    goal_met: bool | None = None
    profile: Callable[[], object] | None = field(default=None, repr=False)
    operators: str = field(default="", repr=False)

    @property
    def ratio(self) -> float:
        """``ours / peer``; NaN for a row without a peer (or a peer of zero)."""
        return self.ours / self.peer if self.peer else math.nan

    @property
    def met(self) -> bool | None:
        """Whether every target of the row held; None when it has none."""
        checks = [] if self.goal_met is None else [self.goal_met]
        if self.target is not None:
            checks.append(self.ratio >= self.target if self.higher_is_better else self.ratio <= self.target)
        return all(checks) if checks else None


def ratio_spread(ours: Timing, peer: Timing) -> float:
    """The relative noise of a ratio of two medians: the root sum of squares of their spreads."""
    return (ours.spread**2 + peer.spread**2) ** 0.5


# Networks


def parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def _network_inputs(net: nn.Module, shape: tuple[int, ...], batch: int, device: torch.device, classes: int):
    x = torch.randn(batch, *shape, device=device)
    t = torch.randint(0, 1000, (batch,), device=device).float()
    labels = torch.randint(0, classes, (batch,), device=device) if classes else None
    return x, t, labels


def training_step(net: nn.Module, inputs: tuple, settings: Settings) -> Callable[[], None]:
    """One optimizer step of ``net`` on fixed inputs ``(x, t, labels)``: forward under the settings' autocast,
    the mean squared error to a fixed random target, backward, Adam."""
    x, t, labels = inputs
    if settings.channels_last and x.ndim == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    dtype = AUTOCAST_DTYPES[settings.precision]
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-5)
    with torch.no_grad(), torch.autocast(settings.device.type, dtype=dtype, enabled=dtype is not None):
        target = torch.randn_like(net(x, t, labels).float())

    def step() -> None:
        with torch.autocast(settings.device.type, dtype=dtype, enabled=dtype is not None):
            loss = (net(x, t, labels).float() - target).square().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def forward_gflops(build: Callable[[], nn.Module], shape: tuple[int, ...], classes: int) -> float:
    """GFLOPs of one example's forward pass, counted on the meta device."""
    with torch.device("meta"):
        net = build()
        inputs = _network_inputs(net, shape, 1, torch.device("meta"), classes)
        return count_flops(lambda: net(*inputs)) / 1e9


def compare_training(
    group: str,
    name: str,
    builders: tuple[Callable[[], nn.Module], Callable[[], nn.Module]],
    shape: tuple[int, ...],
    classes: int,
    batch: int,
    settings: Settings,
    convolutional: bool,
    note: str = "",
    target: float | None = None,
) -> list[Row]:
    """Time per training step and peak memory of ``builders[0]()`` (ours) against ``builders[1]()`` (the peer)."""
    torch.manual_seed(0)
    nets = [settings.prepare(build(), convolutional).train() for build in builders]
    inputs = _network_inputs(nets[0], shape, batch, settings.device, classes)
    steps = {side: training_step(net, inputs, settings) for side, net in zip(("ours", "peer"), nets, strict=True)}
    timing = time_in_turns(steps, settings.device, settings.warmup, settings.rounds)
    memory = peak_memory_in_turns(steps, settings.device)
    counts = f"{parameters(nets[0]) / 1e6:.1f} M vs {parameters(nets[1]) / 1e6:.1f} M parameters"
    flops = [forward_gflops(build, shape, classes) for build in builders]
    setting = f"batch {batch}, {counts}, {flops[0]:.2f} vs {flops[1]:.2f} forward GFLOPs/example" + (
        f"; {note}" if note else ""
    )
    ours, peer = timing["ours"], timing["peer"]
    return [
        Row(
            group,
            name,
            setting,
            "ms/step",
            1e3 * ours.median,
            1e3 * peer.median,
            ratio_spread(ours, peer),
            target=target,
            profile=steps["ours"],
        ),
        Row(
            group,
            f"{name}: peak memory",
            f"batch {batch}, above the weights and optimizer state",
            "MiB",
            memory["ours"],
            memory["peer"],
        ),
    ]


def speed_target(device: torch.device) -> float:
    """The bound on ours/peer time per training step: no slower on a CPU, 1.2 times the images/s on a GPU."""
    return 1 / 1.2 if device.type == "cuda" else 1.0


def network_rows(settings: Settings, scale: Scale) -> Iterator[Row]:
    """Our U-Nets and DiT against diffusers' (target: :func:`speed_target`), and the latent DiffiT against our DiT."""
    for preset, title, batch in (
        ("ddpm_cifar10", "U-Net, DDPM CIFAR-10", scale.unet_batch),
        ("ddpmpp_cifar10", "U-Net, DDPM++ CIFAR-10 (EDM config F)", scale.ddpmpp_batch),
    ):
        config = unet_preset(preset)
        differences = unet_differences(config)
        yield from compare_training(
            "networks",
            f"{title} vs diffusers UNet2DModel",
            (lambda config=config: UNet(config), lambda config=config: diffusers_unet(config)),
            (config.in_channels, config.resolution, config.resolution),
            0,
            batch,
            settings,
            convolutional=True,
            note="diffusers differs: " + "; ".join(differences) if differences else "the same network",
            # The target is set at an equal parameter count, which only an exact layout gives.
            target=None if differences else speed_target(settings.device),
        )
    dit = dit_preset(scale.dit) if scale.dit != "digits16" else dit_preset("digits16", num_classes=10)
    extra = (dit.depth - 1) * dit_embedder_parameters(dit)
    yield from compare_training(
        "networks",
        f"DiT-{scale.dit} vs diffusers DiTTransformer2DModel",
        (lambda: DiT(dit), lambda: diffusers_dit(dit)),
        (dit.in_channels, dit.resolution, dit.resolution),
        dit.num_classes,
        scale.dit_batch,
        settings,
        convolutional=False,
        note=f"diffusers keeps a time-and-label embedder per block ({extra / 1e6:.2f} M more parameters)",
        target=speed_target(settings.device),
    )
    yield from diffit_rows(dit, settings, scale)


def latent_diffit_like(dit: DiTConfig):
    """The latent DiffiT of the DiT's size: ``imagenet256``'s model at the DiT's depth, width, heads and grid."""
    return latent_diffit_preset(
        "imagenet256",
        **{key: getattr(dit, key) for key in ("in_channels", "resolution", "patch_size", "dim", "depth", "num_heads")},
        num_classes=dit.num_classes,
        learn_sigma=dit.learn_sigma,
    )


def training_gflops(build: Callable[[], nn.Module], shape: tuple[int, ...], classes: int) -> float:
    """GFLOPs of one example's forward and backward pass, counted on the meta device."""
    with torch.device("meta"):
        net = build()
        inputs = _network_inputs(net, shape, 1, torch.device("meta"), classes)
        return count_flops(lambda: net(*inputs).square().mean().backward()) / 1e9


def diffit_rows(dit: DiTConfig, settings: Settings, scale: Scale) -> Iterator[Row]:
    """Latent DiffiT against our DiT: counted FLOPs at XL/2 (DiffiT's Table 9 reports 114 vs 119 GMACs), time per
    training step at ``dit``'s size, and the latent DiffiT's model FLOPs utilisation where the peak is known."""
    xl = dit_preset("XL/2")
    xl_shape = (xl.in_channels, xl.resolution, xl.resolution)
    ours, peer = (
        forward_gflops(build, xl_shape, xl.num_classes)
        for build in (lambda: LatentDiffiT(latent_diffit_like(xl)), lambda: DiT(xl))
    )
    yield Row(
        "networks",
        "latent DiffiT-XL/2 vs DiT-XL/2: forward GMACs/image",
        "counted by FlopCounterMode (paper, Table 9: 114 vs 118.6)",
        "GMACs",
        ours / 2,
        peer / 2,
    )
    diffit, shape = latent_diffit_like(dit), (dit.in_channels, dit.resolution, dit.resolution)
    step, memory = compare_training(
        "networks",
        f"latent DiffiT vs DiT, both {scale.dit}",
        (lambda: LatentDiffiT(diffit), lambda: DiT(dit)),
        shape,
        dit.num_classes,
        scale.dit_batch,
        settings,
        convolutional=False,
        note="TMSA in place of adaLN-Zero, a relative-position bias in attention",
        target=None,
    )
    yield from (step, memory)
    peak = settings.device_peak_flops
    if peak is not None:
        flops = training_gflops(lambda: LatentDiffiT(diffit), shape, dit.num_classes) * 1e9 * scale.dit_batch
        utilisation = flops / (step.ours / 1e3) / peak
        yield Row(
            "networks",
            f"latent DiffiT-{scale.dit}: model FLOPs utilisation",
            f"batch {scale.dit_batch}; counted forward and backward FLOPs over the peak ({peak / 1e12:.3g} TFLOP/s)",
            "% of peak",
            100 * utilisation,
            goal=">= 40 % (latent DiffiT-XL/2)",
            goal_met=utilisation >= 0.4,
            profile=step.profile,
        )


# Samplers


class ReturnsInput(nn.Module):
    """A network that costs nothing: what a sampler costs with it is the sampler's own work."""

    def forward(self, x: Tensor, noise_labels: Tensor, class_labels: Tensor | None = None) -> Tensor:
        return x


def sampler_rows(settings: Settings, scale: Scale) -> Iterator[Row]:
    """Each sampler's time per network evaluation beyond the network, ours against diffusers' scheduler loop,
    measured with a network that costs nothing; the goal is under 5 % of a call of DDPM's CIFAR-10 U-Net."""
    device, free = settings.device, ReturnsInput()
    noise = torch.randn(scale.sampler_batch, 3, 32, 32, device=device)
    ddpm, edm = DDPM(), EDM()
    vp_denoiser, edm_denoiser = Denoiser(free, ddpm), Denoiser(free, edm)
    ddim, euler, heun = (
        diffusers_scheduler(kind, process) for kind, process in (("ddim", ddpm), ("edm-euler", edm), ("heun", ddpm))
    )
    cases = {  # name: (network evaluations, ours, the peer's)
        "DDIM, 50 steps": (
            50,
            lambda: Sampler("ddim", 50, DDIMOptions(spacing="leading"))(vp_denoiser, noise),
            lambda: run_scheduler(ddim, free, noise, 50),
        ),
        "EDM Euler, 18 steps": (
            18,
            lambda: Sampler("euler", 18)(edm_denoiser, noise),
            lambda: run_scheduler(euler, free, noise, 18),
        ),
        "EDM Heun, 18 steps (35 NFE) on DDPM's levels": (
            35,
            lambda: Sampler("heun", 18)(vp_denoiser, noise),  # Karras levels over DDPM's range
            lambda: run_scheduler(heun, free, noise, 18),
        ),
    }
    network = settings.prepare(UNet(unet_preset("ddpm_cifar10")), convolutional=True).eval()
    labels = torch.full((scale.sampler_batch,), 500.0, device=device)
    with torch.no_grad():
        call = time_in_turns({"net": lambda: network(noise, labels)}, device, settings.warmup, settings.rounds)["net"]
    for name, (nfe, ours, peer) in cases.items():
        timing = time_in_turns({"ours": ours, "peer": peer}, device, settings.warmup, settings.rounds)
        overhead = timing["ours"].median / nfe
        yield Row(
            "samplers",
            name,
            f"batch {scale.sampler_batch} of 3x32x32; one call of DDPM's U-Net: {1e3 * call.median:.1f} ms",
            "us/NFE",
            1e6 * overhead,
            1e6 * timing["peer"].median / nfe,
            ratio_spread(timing["ours"], timing["peer"]),
            goal=f"< 5 % of a network call ({100 * overhead / call.median:.3f} %)",
            goal_met=overhead < 0.05 * call.median,
            profile=ours,
        )


# Data


def _first_batches(batches: Iterator, count: int) -> Callable[[], None]:
    def load() -> None:
        for _ in islice(batches, count):
            pass

    return load


def loader_rows(settings: Settings, scale: Scale) -> Iterator[Row]:
    """CIFAR-10 training batches (random flips) from files in CIFAR-10's format: the package's loader, as the
    Trainer draws it, against torchvision's dataset with the usual transforms in a plain ``DataLoader``; both in
    the main process, as a CPU run or ``num_workers=0`` has them."""
    from torchvision.datasets import CIFAR10

    # Both datasets read the files into memory when they are built; the files can go at once.
    with tempfile.TemporaryDirectory(prefix="diffbook-bench-") as root:
        checksums = random_cifar10(root, scale.loader_images_per_file)
        with patched(CIFAR10, cifar10_checksums(checksums)):
            ours = ImagesOnly(load_image_dataset("cifar10", root=root, flip=True))
            peer = torchvision_cifar10(root)
    batch = scale.loader_batch
    ours_batches = iter(EpochBatches(ours, batch, seed=0))
    peer_batches = (x for _ in iter(int, 1) for x, _ in DataLoader(peer, batch, shuffle=True, drop_last=True))
    loads = {
        "ours": _first_batches(ours_batches, scale.loader_batches),
        "peer": _first_batches(peer_batches, scale.loader_batches),
    }
    timing = time_in_turns(loads, torch.device("cpu"), settings.warmup, settings.rounds)
    images = scale.loader_batches * batch
    yield Row(
        "data",
        "CIFAR-10 loader vs torchvision CIFAR10 + DataLoader",
        f"batch {batch}, random flips, {len(ours)} images in CIFAR-10's pickled batches, main process",
        "images/s",
        images / timing["ours"].median,
        images / timing["peer"].median,
        ratio_spread(timing["ours"], timing["peer"]),
        higher_is_better=True,
        target=1.0,
        profile=loads["ours"],
    )


# Evaluation


def evaluation_rows(settings: Settings, scale: Scale) -> Iterator[Row]:
    """FID of ``scale.eval_images`` digits PNGs against scikit-learn's 1,797 as PNGs, on the digits feature
    network: the path of ``python -m diffbook evaluate --features digits --metrics fid``, against clean-fid's
    ``compare_folders`` with the same network. Time, peak memory, and the two FIDs, which must agree."""
    with tempfile.TemporaryDirectory(prefix="diffbook-bench-") as root:
        # The rows are handed on while the folders exist: a row's profile reads them again.
        yield from _evaluation_rows(settings, scale, Path(root))


def _evaluation_rows(settings: Settings, scale: Scale, root: Path) -> Iterator[Row]:
    from diffbook.data.pixels import read_image_folder
    from diffbook.metrics.features import extract_features, fid_from_features, load_digits_feature_net

    samples = write_png_folder(root / "samples", digits_images(scale.eval_images, seed=1))
    reference = write_png_folder(root / "reference", digits_images(1797, seed=2))
    net = load_digits_feature_net().to(settings.device)
    fids = {}

    def ours() -> None:
        features = [extract_features(net, read_image_folder(folder))[0] for folder in (samples, reference)]
        fids["ours"] = fid_from_features(*features)

    def peer() -> None:
        fids["peer"] = cleanfid_folder_fid(samples, reference, net, channels=1)

    timing = time_in_turns({"ours": ours, "peer": peer}, settings.device, warmup=0, rounds=max(settings.rounds // 2, 1))
    memory = peak_memory_in_turns({"ours": ours, "peer": peer}, settings.device)
    setting = f"{scale.eval_images} PNGs vs 1797, digits feature network; FID {fids['ours']:.4f} vs {fids['peer']:.4f}"
    yield Row(
        "evaluation",
        "digits FID from PNG folders vs clean-fid compare_folders",
        setting,
        "s",
        timing["ours"].median,
        timing["peer"].median,
        ratio_spread(timing["ours"], timing["peer"]),
        target=1.0,
        goal="the same FID (to 1e-3)",
        goal_met=abs(fids["ours"] - fids["peer"]) < 1e-3,
        profile=ours,
    )
    yield Row("evaluation", "digits FID: peak memory", setting, "MiB", memory["ours"], memory["peer"])


SECTIONS = {
    "networks": network_rows,
    "samplers": sampler_rows,
    "data": loader_rows,
    "evaluation": evaluation_rows,
}


def run(sections: list[str], settings: Settings, scale: Scale, on_row: Callable[[Row], None] = print) -> list[Row]:
    """Every row of the chosen :data:`SECTIONS`, in order, each handed to ``on_row`` as soon as it is measured;
    a row that missed a target first gets the profiler's top operators of our side (:attr:`Row.operators`)."""
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        raise ValueError(f"unknown sections {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    rows = []
    for section in sections:
        for row in SECTIONS[section](settings, scale):
            if row.met is False and row.profile is not None:
                row.operators = top_operators(row.profile, settings.device)
            on_row(row)
            rows.append(row)
    return rows
