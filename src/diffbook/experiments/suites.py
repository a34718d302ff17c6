"""The comparison chapter's suites: the five papers' methods, and combinations of them, on the same data.

A :class:`Suite` is a list of :class:`Method` s run on each of its datasets with each seed. A method is a shipped
config with overrides; it trains from scratch, or fine-tunes the model that another method of the suite trained
on the same dataset with the same seed. Each of its :class:`Evaluation` s (sampler settings) is a row of the
table. Within a suite every from-scratch model trains the same number of steps and every fine-tuning the same
number more. :mod:`diffbook.experiments.comparison` runs them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from diffbook.profiles import pick

SUITES = ("toy", "digits")


@dataclass(frozen=True)
class Evaluation:
    """One way of sampling a trained model: ``sample.*`` overrides, and the name its row adds to the method's."""

    name: str = ""
    overrides: tuple[str, ...] = ()

    @property
    def slug(self) -> str:
        """A file name stem: ``"Euler, 2 NFE"`` -> ``euler_2_nfe``; ``default`` for the config's own sampler."""
        return _slug(self.name) or "default"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


@dataclass(frozen=True)
class Method:
    """A config with overrides, trained from scratch or fine-tuned from the method labelled ``finetunes``."""

    label: str
    config: str
    overrides: tuple[str, ...] = ()
    finetunes: str | None = None
    evaluations: tuple[Evaluation, ...] = (Evaluation(),)

    @property
    def slug(self) -> str:
        """A directory name: ``"SADM + Iso"`` -> ``sadm_iso``."""
        return _slug(self.label)

    def row(self, evaluation: Evaluation) -> str:
        """The table row of one evaluation: ``"BCM, 2 NFE"``."""
        return f"{self.label}, {evaluation.name}" if evaluation.name else self.label


@dataclass(frozen=True)
class Suite:
    """Every method on every dataset (``data.name``) with seeds ``0 .. seeds - 1``.

    ``overrides`` apply to every run, before the method's; ``num_samples`` is the size of both the sample and
    the reference set of each evaluation; ``metrics`` are the summary's columns and figure panels, in order.
    """

    name: str
    datasets: tuple[str, ...]
    methods: tuple[Method, ...]
    metrics: tuple[str, ...]
    num_samples: int
    seeds: int = 3
    overrides: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        labels = [method.label for method in self.methods]
        if len(set(labels)) != len(labels):
            raise ValueError(f"method labels must be unique, got {labels}")
        for method in self.methods:
            if method.finetunes is not None and labels.index(method.finetunes) > labels.index(method.label):
                raise ValueError(f"{method.label!r} fine-tunes {method.finetunes!r}, which must come before it")
        if self.seeds < 1:
            raise ValueError(f"a suite needs at least one seed, got {self.seeds}")

    def method(self, label: str) -> Method:
        """The method labelled ``label``."""
        for method in self.methods:
            if method.label == label:
                return method
        raise ValueError(f"no method {label!r} in suite {self.name!r}; methods: {[m.label for m in self.methods]}")


# Euler's 1, 2 and 4 steps put the MSE baseline at the network calls BCM spends.
_EULER = tuple(Evaluation(f"Euler, {n} NFE", ("sample.sampler=euler", f"sample.steps={n}")) for n in (1, 2, 4))
_HEUN = Evaluation("Heun, 35 NFE")
_BCM = tuple(Evaluation(f"{n} NFE", (f"sample.steps={n}",)) for n in (1, 2, 4))
_ISO_OVER_SP = "objective={kind: iso, weight: 0.1, base: {kind: self_perceptual}}"


def _methods(dataset: str, scratch: int, finetune: int, ddpm_steps: int) -> tuple[Method, ...]:
    """The methods of a suite on ``dataset`` (``toy`` or ``digits``): ``scratch`` steps from scratch, then
    ``finetune`` steps more; the DDPM-epsilon models sample with ``ddpm_steps`` ancestral steps."""
    s, m = (f"train.steps={scratch}",), (f"train.steps={finetune}", "train.warmup_steps=0")
    ddpm = (*s, f"sample.steps={ddpm_steps}") + (("train.batch_size=256",) if dataset == "toy" else ())
    continued_lr = {"toy": ("train.lr=5e-4",), "digits": ("train.lr=2e-4",)}[dataset]
    methods = [
        Method("MSE (EDM)", f"{dataset}/edm", s, evaluations=(_HEUN, *_EULER)),
        Method("MSE (EDM), continued", f"{dataset}/edm", (*m, *continued_lr), "MSE (EDM)"),
        Method("SADM", f"{dataset}/sadm", m, "MSE (EDM)"),
        Method("MSE (DDPM eps)", f"{dataset}/iso", (*ddpm, "objective.weight=0")),
        Method("Iso-Diffusion", f"{dataset}/iso", ddpm),
        Method("MSE (v, zero SNR)", f"{dataset}/sp_pretrain", s),
        Method("MSE (v), continued", f"{dataset}/sp_pretrain", (*m, "train.lr=2e-4"), "MSE (v, zero SNR)"),
        Method("Self-perceptual", f"{dataset}/self_perceptual", m, "MSE (v, zero SNR)"),
        Method("BCM", f"{dataset}/bcm", (*s, f"objective.total_steps={scratch}"), evaluations=_BCM),
        Method("Self-perceptual + Iso", f"{dataset}/self_perceptual", (*m, _ISO_OVER_SP), "MSE (v, zero SNR)"),
        Method("SADM + Iso", f"{dataset}/sadm", (*m, "objective.base={kind: iso, weight: 0.1}"), "MSE (EDM)"),
    ]
    if dataset == "digits":  # a 2D point has no spatial tokens: the attention backbone is an image model
        tmsa = ("network.kind=diffit_unet", "network.preset=digits8", "network.overrides={dropout: 0.0}")
        methods.insert(3, Method("DiffiT (TMSA)", "digits/diffit8", s))
        methods.append(Method("DiffiT (TMSA) + Iso", "digits/iso", (*ddpm, *tmsa)))
        # quick: the image networks' code paths, in seconds; the objectives' run in the toy suite
        quick = ("MSE (EDM)", "DiffiT (TMSA)", "BCM")
        methods = pick(quick=[method for method in methods if method.label in quick], book=methods)
    return tuple(methods)


def suite(name: str, seeds: int | None = None) -> Suite:
    """The shipped suite ``toy`` (three 2D sets) or ``digits`` (scikit-learn's digits at 8 x 8), at the active
    profile's scale (``quick``: a reduced suite that proves the code paths; ``book``: the chapter's numbers)."""
    if name == "toy":
        return Suite(
            "toy",
            pick(quick=("eight_gaussians",), book=("eight_gaussians", "two_moons", "checkerboard")),
            _methods("toy", pick(quick=150, book=2000), pick(quick=50, book=250), ddpm_steps=1000),
            ("precision", "recall", "density", "coverage", "sliced_wasserstein", "pairwise_w1"),
            num_samples=pick(quick=500, book=3000),
            seeds=seeds or pick(quick=1, book=3),
            overrides=("data.n=20000", "train.log_every=50", "train.checkpoint_every=500"),
        )
    if name == "digits":
        return Suite(
            "digits",
            ("digits",),
            _methods("digits", pick(quick=20, book=150), pick(quick=10, book=50), ddpm_steps=100),
            ("fid", "precision", "recall", "density", "coverage"),
            num_samples=pick(quick=100, book=300),
            seeds=seeds or pick(quick=1, book=3),
            overrides=("data.resolution=8", "network.overrides.resolution=8", "train.log_every=10"),
        )
    raise ValueError(f"unknown suite {name!r}; suites: {', '.join(SUITES)}")
