"""The ``python -m diffbook`` command line: one subcommand per task.

- ``notebooks [PATHS...]``: execute notebooks in place and save their outputs (directories expand to the
  ``*.ipynb`` files inside them, sorted; default ``notebooks``).
- ``exercises [--src notebooks] [--out exercises]``: write the students' copies of the notebooks;
  ``exercises --check NOTEBOOK...`` runs notebooks and prints PASS or FAIL per exercise (exit 1 on a failure).
- ``train --config NAME [key=value ...] [--run-dir DIR] [--dry-run]``: train from a config (see
  :mod:`diffbook.experiments.experiment`); resumes from ``DIR/checkpoint.pt`` when there is one.
- ``sample --ckpt PATH --seeds 0-49999 --out DIR [--batch 256] [--config YAML] [--class-labels 0-9] [--vae ID]
  [key=value ...] [--dry-run]``: one image per seed, the same whatever the batch size or number of processes
  (see :mod:`diffbook.experiments.sampling`), with the run's config overridden (``sample.steps=50``,
  ``sample.sampler=ddim``); a latent model's samples are decoded by the VAE.
- ``evaluate --samples DIR --ref NAME|DIR [--metrics fid,kid,is,prdc] [--features digits|inception] [--out JSON]``:
  feature-space metrics of samples against a dataset of the registry, a folder of images, or (``--ref-stats``)
  clean-fid's precomputed Inception statistics.
- ``train-feature-net digits [--out PATH] [--steps N]``: train the digits feature network that ``evaluate`` uses.
- ``sweep --config NAME --grid KEY=V1,V2 [--grid ...] --seeds 0-2 --out DIR [--samples N] [--jobs J] [key=value ...]``:
  one model per grid point and seed, trained, sampled and scored; ``DIR/table.md`` holds mean +- std per point
  (see :mod:`diffbook.experiments.sweep`). Finished runs are not redone.
- ``benchmark --suite toy|digits [--seeds 3] [--out DIR] [--jobs 2]``: the comparison chapter's suite, every
  method and combination on the same data, metrics and seeds, at the active profile's scale; writes
  ``DIR/results.json``, ``table.md`` and ``comparison.png`` (see :mod:`diffbook.experiments.comparison`). Resumable.
- ``precompute-latents --root DIR --out DIR [--data imagefolder] [--resolution 256] [--vae ID|PATH] [--flip]``:
  encode a dataset once with Stable Diffusion's VAE, for the latent models' configs (``data.name: latents``).

Errors a user can fix (an unknown config key, a bad seed range, a missing file) print one line and exit with 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from diffbook.profiles import PROFILES, current_profile

if TYPE_CHECKING:
    from torch import Tensor

# Subcommands import their modules when they run: the notebook tools need the `book` extra, which a
# training cluster does not install.


def _notebooks(args: argparse.Namespace) -> int:
    from diffbook.booktools.runner import execute_notebooks, expand_notebook_paths

    paths = expand_notebook_paths(args.paths)
    if not paths:
        print(f"No notebooks in {', '.join(args.paths)}.")
        return 0
    profile = args.profile or current_profile()
    seconds = execute_notebooks(paths, profile=profile, timeout=args.timeout)
    print(f"{len(seconds)} notebook(s) in {sum(seconds.values()):.1f} s")
    return 0


def _exercises(args: argparse.Namespace) -> int:
    from diffbook.booktools.exercises import grade, write_student_copies

    if not args.check:
        written = write_student_copies(args.src, args.out)
        print(f"Wrote {len(written)} student notebook(s) to {args.out}/")
        return 0
    failed = 0
    for path in args.check:
        for number, passed, message in grade(path, args.profile):
            failed += not passed
            last_line = message.splitlines()[-1] if message else ""
            print(f"{path}: exercise {number}: {'PASS' if passed else 'FAIL'} {last_line}")
    return 1 if failed else 0


def _train(args: argparse.Namespace) -> int:
    from diffbook.experiments import Experiment

    experiment = Experiment.load(args.config, args.overrides)
    if args.dry_run:
        print(experiment.to_yaml(), end="")
        return 0
    from diffbook.experiments.sampling import preview_fn
    from diffbook.runtime import cleanup, init_distributed
    from diffbook.train import Trainer

    run_dir = Path(args.run_dir or default_run_dir(args.config))
    context = init_distributed(args.device)
    try:
        if context.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "config.yaml").write_text(experiment.to_yaml())
        model = experiment.initial_model().to(context.device)
        objective, dataset = experiment.build_objective(model), experiment.build_dataset()
        preview = preview_fn(experiment)
        Trainer(model, objective, dataset, experiment.train, run_dir, preview, desc=str(args.config)).fit()
    finally:
        cleanup()
    if context.is_main:
        print(f"Trained {args.config}: checkpoint and config in {run_dir}/")
    return 0


def default_run_dir(config: str) -> Path:
    """``runs/<dataset>-<method>`` for ``<dataset>/<method>`` or ``.../<dataset>/<method>.yaml``."""
    path = Path(config)
    return Path("runs") / f"{path.parent.name}-{path.stem}" if path.parent.name else Path("runs") / path.stem


def _sample(args: argparse.Namespace) -> int:
    from diffbook.experiments import run_config
    from diffbook.experiments.sampling import SampleRequest, parse_int_ranges, sample_to_dir

    experiment = run_config(args.ckpt, args.config, args.overrides)
    if args.dry_run:
        print(experiment.to_yaml(), end="")
        return 0
    seeds = parse_int_ranges(args.seeds)
    labels = parse_int_ranges(args.class_labels, "class labels") if args.class_labels else None
    request = SampleRequest(seeds, args.batch, labels, args.device or _default_device(), args.vae)
    npz = sample_to_dir(args.ckpt, experiment, args.out, request)
    print(f"Wrote samples to {args.out}/ ({npz.name})")
    return 0


def _default_device() -> str:
    import torch

    if not torch.cuda.is_available():
        return "cpu"
    return f"cuda:{os.environ.get('LOCAL_RANK', 0)}"


def _evaluate(args: argparse.Namespace) -> int:
    from diffbook.data.pixels import read_image_folder
    from diffbook.metrics.features import extract_features, feature_metrics, metrics_needing_reference_features

    metrics = [name.strip() for name in args.metrics.split(",") if name.strip()]
    samples = read_image_folder(args.samples)
    net = _feature_net(args.features, args.ref_stats)
    sample_features, sample_logits = extract_features(net, samples, args.batch)
    reference_features, reference_statistics = None, None
    if args.ref_stats:
        from diffbook.metrics.features import cleanfid_reference_statistics

        reference_statistics = cleanfid_reference_statistics(
            args.ref, samples.shape[-1], args.ref_stats, args.ref_split
        )
    if metrics_needing_reference_features(metrics, from_statistics=reference_statistics is not None):
        reference_features, _ = extract_features(net, _reference_images(args, samples), args.batch)
    results = feature_metrics(metrics, sample_features, sample_logits, reference_features, reference_statistics)
    report = {
        "metrics": results,
        "samples": str(args.samples),
        "num_samples": len(samples),
        "reference": args.ref,
        "reference_stats": args.ref_stats,
        "num_reference": None if reference_features is None else len(reference_features),
        "features": args.features,
    }
    out = Path(args.out or Path(args.samples) / f"metrics-{args.features}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    print(f"Saved {out}")
    return 0


def _feature_net(features: str, mode: str | None):
    from diffbook.metrics.features import InceptionFeatures, load_digits_feature_net

    if features == "digits":
        if mode:
            raise ValueError("--ref-stats holds Inception statistics; use it with --features inception")
        return load_digits_feature_net()
    return InceptionFeatures(mode or "clean")


def _reference_images(args: argparse.Namespace, samples: Tensor) -> Tensor:
    """``--ref`` as uint8 images at the samples' resolution and channels: a folder, or a registry dataset."""
    from diffbook.data.pixels import load_reference, read_image_folder

    if Path(args.ref).is_dir():
        return read_image_folder(args.ref)
    return load_reference(args.ref, samples.shape[-1], samples.shape[1], args.ref_root, args.ref_split)


def _train_feature_net(args: argparse.Namespace) -> int:
    from diffbook.metrics.features import (
        DIGITS_WEIGHTS,
        held_out_accuracy,
        load_digits_feature_net,
        save_digits_feature_net,
        train_digits_feature_net,
    )

    out = Path(args.out or Path(__file__).parent / DIGITS_WEIGHTS)
    save_digits_feature_net(train_digits_feature_net(args.steps, args.seed), out)
    # Measured on the saved (float16) weights, which are what evaluation will use.
    accuracy = held_out_accuracy(load_digits_feature_net(out))
    print(f"Saved {out} ({out.stat().st_size / 1024:.0f} KiB); held-out accuracy {accuracy:.1%} on 300 digits")
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from diffbook.experiments.sampling import parse_int_ranges
    from diffbook.experiments.sweep import parse_grid, run_sweep

    seeds = parse_int_ranges(args.seeds)
    records = run_sweep(args.config, parse_grid(args.grid), seeds, args.out, args.overrides, args.samples, args.jobs)
    print((Path(args.out) / "table.md").read_text(), end="")
    print(f"{len(records)} run(s); results in {args.out}/results.json and {args.out}/table.md")
    return 0


def _benchmark(args: argparse.Namespace) -> int:
    from diffbook.experiments.comparison import run_suite
    from diffbook.experiments.suites import suite

    chosen = suite(args.suite, args.seeds)
    out = Path(args.out or f"runs/comparison-{args.suite}-{current_profile()}")
    results = run_suite(chosen, out, args.jobs)
    print((out / "table.md").read_text(), end="")
    print(f"{len(results['runs'])} evaluation(s) in {results['wall_seconds'] / 60:.1f} min; results in {out}/")
    return 0


def _precompute_latents(args: argparse.Namespace) -> int:
    from diffbook.data import load_image_dataset
    from diffbook.experiments.latents import precompute_latents
    from diffbook.nets.vae import SD_VAE, load_vae

    dataset = load_image_dataset(args.data, root=args.root, split=args.split, resolution=args.resolution, channels=3)
    name = args.vae or SD_VAE
    vae = load_vae(name, download=args.download, device=args.device or _default_device())
    out = precompute_latents(vae, dataset, args.out, args.batch, args.flip, args.seed, vae_name=name)
    print(f"Wrote the latents of {len(dataset)} image(s){' and their mirror images' if args.flip else ''} to {out}/")
    return 0


def _import_dit(args: argparse.Namespace) -> int:
    from diffbook.diffusion import Denoiser
    from diffbook.experiments import Experiment
    from diffbook.nets.convert_dit import load_released_dit
    from diffbook.train import save_checkpoint

    experiment = Experiment.load(args.config, args.overrides)
    if experiment.network.kind != "dit":
        raise ValueError(f"{args.config} has network.kind {experiment.network.kind!r}; import-dit needs a dit config")
    network = load_released_dit(args.weights, experiment.network.config())
    model = Denoiser(network, experiment.build_model().process)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint({"step": 0, "model": model.state_dict(), "ema": None}, out)
    print(f"Wrote {args.weights} as a checkpoint for network.init_from: {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; each subcommand stores the function that runs it as ``run``."""
    parser = argparse.ArgumentParser(
        prog="python -m diffbook", description="The diffbook tools, one subcommand per task."
    )
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
    exercises.add_argument("--profile", default="quick", choices=PROFILES, help="the profile --check runs in")
    exercises.set_defaults(run=_exercises)

    _add_train(commands)
    _add_sample(commands)
    _add_evaluate(commands)
    _add_train_feature_net(commands)
    _add_sweep(commands)
    _add_benchmark(commands)
    _add_precompute_latents(commands)
    _add_import_dit(commands)
    return parser


def _add_train(commands) -> None:
    train = commands.add_parser("train", help="train a model from a config")
    train.add_argument("--config", required=True, help="a shipped config, e.g. digits/edm, or a YAML file")
    train.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. train.steps=100")
    train.add_argument("--run-dir", default=None, help="checkpoints and config.yaml (default runs/<dataset>-<method>)")
    train.add_argument("--dry-run", action="store_true", help="print the resolved config as YAML and exit")
    train.add_argument("--device", default=None, help="default: this rank's GPU if there is one, else cpu")
    train.set_defaults(run=_train)


def _add_sample(commands) -> None:
    sample = commands.add_parser("sample", help="sample one image per seed from a checkpoint")
    sample.add_argument("--ckpt", required=True, help="a Trainer checkpoint, e.g. runs/digits-edm/checkpoint.pt")
    sample.add_argument("--seeds", required=True, help="seeds, e.g. 0-49999 or 0,5,7")
    sample.add_argument("--out", required=True, help="directory for {seed:06d}.png and samples.npz")
    sample.add_argument("--batch", type=int, default=256, help="images per batch (deterministic samplers)")
    sample.add_argument("--config", default=None, help="the run's config (default: config.yaml beside --ckpt)")
    sample.add_argument("--class-labels", default=None, help="labels cycled by seed, e.g. 0-9: seed k gets k %% 10")
    sample.add_argument("--device", default=None, help="default: cuda:$LOCAL_RANK if there is a GPU, else cpu")
    sample.add_argument("--vae", default=None, help="latent models: the decoder's id or folder (default: the SD VAE)")
    sample.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="overrides of the run's config, e.g. sample.steps=50"
    )
    sample.add_argument("--dry-run", action="store_true", help="print the resolved config as YAML and exit")
    sample.set_defaults(run=_sample)


def _add_evaluate(commands) -> None:
    evaluate = commands.add_parser("evaluate", help="FID, KID, IS and PRDC of samples against a reference")
    evaluate.add_argument("--samples", required=True, help="a directory of sample PNGs (or samples*.npz)")
    evaluate.add_argument("--ref", required=True, help="an image dataset of the registry, or a directory of PNGs")
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
    evaluate.add_argument("--batch", type=int, default=256, help="images per feature-network call")
    evaluate.set_defaults(run=_evaluate)


def _add_train_feature_net(commands) -> None:
    feature_net = commands.add_parser("train-feature-net", help="train the digits feature network for evaluate")
    feature_net.add_argument("dataset", choices=("digits",), help="the only feature network trained here")
    feature_net.add_argument("--out", default=None, help="weights file (default: the package's committed one)")
    feature_net.add_argument("--steps", type=int, default=1000, help="Adam steps of 128 images")
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
    sweep.add_argument("--samples", type=int, default=None, help="samples and reference points per run")
    sweep.add_argument("--jobs", type=int, default=1, help="runs trained at once, one process and thread each")
    sweep.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="overrides for every run")
    sweep.set_defaults(run=_sweep)


def _add_benchmark(commands) -> None:
    benchmark = commands.add_parser(
        "benchmark", help="the comparison chapter's suite: every method on the same data, metrics and seeds"
    )
    benchmark.add_argument("--suite", required=True, choices=("toy", "digits"), help="2D sets or digits")
    benchmark.add_argument("--seeds", type=int, default=None, help="seeds 0..N-1 (default: the profile's, book 3)")
    benchmark.add_argument("--out", default=None, help="default runs/comparison-<suite>-<profile>")
    benchmark.add_argument("--jobs", type=int, default=2, help="models trained at once, one process and thread each")
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
    latents.add_argument("--batch", type=int, default=64, help="images per VAE call")
    latents.add_argument("--seed", type=int, default=0, help="seed of the posterior samples")
    latents.add_argument("--device", default=None, help="default: cuda:$LOCAL_RANK if there is a GPU, else cpu")
    latents.set_defaults(run=_precompute_latents)


def _add_import_dit(commands) -> None:
    dit = commands.add_parser("import-dit", help="the released DiT weights as a checkpoint to fine-tune from")
    dit.add_argument("weights", help="the release's file, e.g. DiT-XL-2-256x256.pt (facebookresearch/DiT)")
    dit.add_argument("--out", required=True, help="the checkpoint, e.g. runs/imagenet256-dit-xl2/checkpoint.pt")
    dit.add_argument("--config", default="imagenet256/sadm", help="a dit config whose network the weights fill")
    dit.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. network.preset=XL/4")
    dit.set_defaults(run=_import_dit)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default: ``sys.argv[1:]``), run the subcommand and return its exit status."""
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError) as error:
        print(f"python -m diffbook {args.command}: error: {error}", file=sys.stderr)
        return 2
