"""The argument parser of ``python -m diffbook``: one subparser per subcommand, each storing its ``run``."""

from __future__ import annotations

import argparse
from typing import NoReturn

from diffbook.cli.commands import (
    _benchmark,
    _evaluate,
    _exercises,
    _export_diffusers,
    _fetch_inception,
    _import_release,
    _notebooks,
    _pdf,
    _precompute_latents,
    _sample,
    _stamp,
    _sweep,
    _train,
    _train_feature_net,
)
from diffbook.experiments.imports import IMPORTERS
from diffbook.profiles import PROFILES


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors as one line like every other error of the command line (not its usage block)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (--help lists the options)\n")


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; each subcommand stores the function that runs it as ``run``."""
    parser = _Parser(prog="python -m diffbook", description="The diffbook tools, one subcommand per task.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    notebooks = commands.add_parser("notebooks", help="execute notebooks in place and save their outputs")
    notebooks.add_argument("paths", nargs="*", default=["notebooks"], help="notebooks or directories")
    notebooks.add_argument(
        "--profile",
        choices=PROFILES,
        default=None,
        help="run profile for the kernel (default: $DIFFBOOK_PROFILE, else book)",
    )
    notebooks.add_argument("--timeout", type=int, default=900, help="seconds any one cell may run")
    notebooks.set_defaults(run=_notebooks)

    exercises = commands.add_parser("exercises", help="write students' copies with the solutions removed")
    exercises.add_argument("--src", default="notebooks", help="directory of solution notebooks")
    exercises.add_argument("--out", default="exercises", help="directory for the students' copies")
    exercises.add_argument(
        "--check", nargs="+", metavar="NOTEBOOK", help="instead, run these notebooks and grade each exercise"
    )
    exercises.add_argument(
        "--book", metavar="DIR", help="instead, the book's sources with the solutions stubbed out, to build"
    )
    exercises.add_argument("--profile", default="quick", choices=PROFILES, help="the profile --check runs in")
    exercises.set_defaults(run=_exercises)

    _add_train(commands)
    _add_sample(commands)
    _add_evaluate(commands)
    _add_train_feature_net(commands)
    _add_sweep(commands)
    _add_benchmark(commands)
    _add_precompute_latents(commands)
    _add_import(commands)
    fetch = commands.add_parser("fetch-inception", help="clean-fid's Inception weights into the cache, with SHA-256")
    fetch.add_argument("--from", dest="source", default=None, help="a downloaded copy (default: the weights' URL)")
    fetch.add_argument(
        "--pytorch-fid",
        action="store_true",
        help="instead, pytorch-fid's TF-Inception weights, which evaluate --protocol adm and edm read",
    )
    fetch.set_defaults(run=_fetch_inception)
    stamp = commands.add_parser("stamp", help="write the version and home URL into the notebooks and CITATION.cff")
    stamp.add_argument("--root", default=".", help="the repository (default: here)")
    stamp.set_defaults(run=_stamp)
    pdf = commands.add_parser("pdf", help="print the built book (or one page) to a PDF with the system Chromium")
    pdf.add_argument("html", nargs="?", default="_build/singlehtml/diffbook.html", help="the built page to print")
    pdf.add_argument("--out", default="_build/pdf/diffbook.pdf", help="the PDF file")
    pdf.set_defaults(run=_pdf)
    _add_export_diffusers(commands)
    return parser


def _add_train(commands) -> None:
    train = commands.add_parser("train", help="train a model from a config")
    train.add_argument("--config", required=True, help="a shipped config, e.g. digits/edm, or a YAML file")
    train.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. train.steps=100")
    train.add_argument("--run-dir", default=None, help="checkpoints and config.yaml (default runs/<dataset>-<method>)")
    train.add_argument("--dry-run", action="store_true", help="print the resolved config as YAML and exit")
    train.add_argument(
        "--accept-changes",
        action="store_true",
        help="train on a run in --run-dir with a config that changes what it learns (the data, lr, network...)",
    )
    train.add_argument("--device", default=None, help="default: this rank's GPU if there is one, else cpu")
    train.set_defaults(run=_train)


def _add_sample(commands) -> None:
    sample = commands.add_parser("sample", help="sample one image per seed from a checkpoint")
    sample.add_argument("--ckpt", required=True, help="a Trainer checkpoint, e.g. runs/digits-edm/checkpoint.pt")
    sample.add_argument("--seeds", required=True, help="seeds, e.g. 0-49999 or 0,5,7")
    sample.add_argument(
        "--out", required=True, help="directory for {seed:06d}.png and samples.npz; a seed with a PNG there is skipped"
    )
    sample.add_argument("--batch", type=positive_int, default=256, help="images per batch (image k is seed k's at any)")
    sample.add_argument("--config", default=None, help="the run's config (default: config.yaml beside --ckpt)")
    sample.add_argument(
        "--class-labels",
        default=None,
        help="labels cycled by seed (0-9: seed k gets k %% 10), or random: uniform, drawn from each seed, as releases",
    )
    sample.add_argument("--device", default=None, help="default: cuda:$LOCAL_RANK if there is a GPU, else cpu")
    sample.add_argument("--vae", default=None, help="latent models: the decoder's id or folder (default: the SD VAE)")
    sample.add_argument("--prompt", action="append", help="text-to-image models: a prompt, cycled by seed; repeat")
    sample.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="overrides of the run's config, e.g. sample.steps=50"
    )
    sample.add_argument("--dry-run", action="store_true", help="print the resolved config as YAML and exit")
    sample.set_defaults(run=_sample)


def _add_evaluate(commands) -> None:
    evaluate = commands.add_parser("evaluate", help="FID, KID, IS and PRDC of samples against a reference")
    evaluate.add_argument(
        "--samples", required=True, help="a directory of sample PNGs (or samples*.npz), or a samples .npz file"
    )
    evaluate.add_argument(
        "--ref",
        required=True,
        help="an image dataset of the registry, or a directory of PNGs; --protocol adm: a reference batch .npz; "
        "--protocol edm: a dataset (e.g. cifar10) or an .npz of mu and sigma",
    )
    evaluate.add_argument(
        "--protocol",
        choices=("clean", "adm", "edm"),
        default="clean",
        help="clean: --metrics on --features; adm: ADM's evaluator (FID, sFID, IS, precision, recall); "
        "edm: EDM's FID. adm and edm use TF-Inception",
    )
    evaluate.add_argument(
        "--inception-weights",
        default=None,
        metavar="FILE",
        help="--protocol adm, edm: pytorch-fid's TF-Inception weights (default: fetch-inception --pytorch-fid's)",
    )
    evaluate.add_argument("--metrics", default="fid,kid,is,prdc", help="comma-separated: fid, kid, is, prdc")
    evaluate.add_argument("--features", choices=("digits", "inception"), default="digits", help="feature network")
    evaluate.add_argument("--out", default=None, help="JSON report (default SAMPLES/metrics-FEATURES.json)")
    evaluate.add_argument("--ref-root", default="data", help="where the reference dataset's files are")
    evaluate.add_argument("--ref-split", default="train", help="reference split (FID protocols use train)")
    evaluate.add_argument(
        "--ref-stats",
        choices=("clean", "legacy_tensorflow"),
        default=None,
        help="FID against clean-fid's precomputed statistics of --ref (e.g. cifar10) in that mode",
    )
    evaluate.add_argument("--batch", type=positive_int, default=256, help="images per feature-network call")
    evaluate.set_defaults(run=_evaluate)


def _add_train_feature_net(commands) -> None:
    feature_net = commands.add_parser("train-feature-net", help="train the digits feature network for evaluate")
    feature_net.add_argument("dataset", choices=("digits",), help="the only feature network trained here")
    feature_net.add_argument("--out", default=None, help="weights file (default: the package's committed one)")
    feature_net.add_argument("--steps", type=positive_int, default=1000, help="Adam steps of 128 images")
    feature_net.add_argument("--seed", type=int, default=0)
    feature_net.set_defaults(run=_train_feature_net)


def _add_sweep(commands) -> None:
    sweep = commands.add_parser("sweep", help="train, sample and score one model per grid point and seed")
    sweep.add_argument("--config", required=True, help="a shipped config, e.g. toy/iso, or a YAML file")
    sweep.add_argument(
        "--grid", action="append", default=[], metavar="KEY=V1,V2", help="a grid axis; repeat for a product"
    )
    sweep.add_argument("--seeds", default="0-2", help="training seeds, e.g. 0-2 (default) or 0,4")
    sweep.add_argument("--out", required=True, help="directory for one folder per run, results.json and table.md")
    sweep.add_argument("--samples", type=positive_int, default=None, help="samples and reference points per run")
    sweep.add_argument("--jobs", type=positive_int, default=1, help="runs trained at once, one process and thread each")
    sweep.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="overrides for every run")
    sweep.set_defaults(run=_sweep)


def _add_benchmark(commands) -> None:
    benchmark = commands.add_parser(
        "benchmark", help="the comparison chapter's suite: every method on the same data, metrics and seeds"
    )
    benchmark.add_argument("--suite", required=True, choices=("toy", "digits"), help="2D sets or digits")
    benchmark.add_argument(
        "--seeds", type=positive_int, default=None, help="seeds 0..N-1 (default: the profile's, book 3)"
    )
    benchmark.add_argument("--out", default=None, help="default runs/comparison-<suite>-<profile>")
    benchmark.add_argument(
        "--jobs", type=positive_int, default=2, help="models trained at once, one process and thread each"
    )
    benchmark.set_defaults(run=_benchmark)


def _add_precompute_latents(commands) -> None:
    latents = commands.add_parser("precompute-latents", help="encode a dataset with the VAE, for latent training")
    latents.add_argument("--root", required=True, help="the dataset's files, e.g. data/imagenet/train")
    latents.add_argument("--out", required=True, help="folder for latents.npy, labels.npy and meta.json")
    latents.add_argument("--data", default="imagefolder", help="an image dataset of the registry")
    latents.add_argument("--split", default="train")
    latents.add_argument("--resolution", type=int, default=256, help="images are resized and centre-cropped to it")
    latents.add_argument(
        "--vae", default=None, help="a Hugging Face id (from the local cache) or a folder (default: the SD VAE)"
    )
    latents.add_argument("--download", action="store_true", help="fetch the VAE from the Hugging Face Hub if absent")
    latents.add_argument("--flip", action="store_true", help="also encode every image mirrored (DiT's flips)")
    latents.add_argument("--batch", type=positive_int, default=64, help="images per VAE call")
    latents.add_argument("--seed", type=int, default=0, help="seed of the posterior samples")
    latents.add_argument("--device", default=None, help="default: cuda:$LOCAL_RANK if there is a GPU, else cpu")
    latents.set_defaults(run=_precompute_latents)


def _add_import(commands) -> None:
    release = commands.add_parser("import", help="released weights as a checkpoint to sample or fine-tune")
    release.add_argument(
        "release",
        choices=sorted(IMPORTERS),
        help="whose: bcm (Mosasaur5526/BCM-iCT-torch), dit (facebookresearch/DiT), diffit (NVlabs/DiffiT)",
    )
    release.add_argument("weights", help="the release's file, e.g. DiT-XL-2-256x256.pt or diffit_256.safetensors")
    release.add_argument(
        "--out", default=None, help="the checkpoint (default runs/<dataset>-<method>-release/checkpoint.pt)"
    )
    release.add_argument(
        "--config",
        default=None,
        help="the config whose network the weights fill (default: imagenet256/dit, imagenet256/diffit, imagenet64/bcm)",
    )
    release.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    release.set_defaults(run=_import_release)


def _add_export_diffusers(commands) -> None:
    export = commands.add_parser("export-diffusers", help="a Stable Diffusion run's U-Net and scheduler for diffusers")
    export.add_argument("--ckpt", required=True, help="the run's checkpoint, e.g. runs/sd21-mse/checkpoint.pt")
    export.add_argument("--out", required=True, help="folder for unet/ (EMA weights when kept) and scheduler/")
    export.add_argument("--config", default=None, help="the run's config (default: config.yaml beside --ckpt)")
    export.set_defaults(run=_export_diffusers)
