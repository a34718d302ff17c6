"""What each subcommand of ``python -m diffbook`` runs: ``run(args) -> exit status``, one function each.

Each imports its modules when it runs: the notebook tools need the ``book`` extra, which a training cluster
does not install.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sized
from pathlib import Path
from typing import TYPE_CHECKING, cast

import diffbook
from diffbook.profiles import current_profile

if TYPE_CHECKING:
    from torch import Tensor


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
    from diffbook.booktools.exercises import grade, write_student_copies, write_students_book

    if args.book:
        out = write_students_book(".", args.book)
        print(f"Wrote the students' edition's sources to {out}/: jupyter-book build {out}")
        return 0
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
    from diffbook.experiments.run_dir import claim_run_dir
    from diffbook.experiments.sampling import preview_fn
    from diffbook.profiles import seed_everything
    from diffbook.runtime import cleanup, init_distributed
    from diffbook.train import Trainer
    from diffbook.train.ema import short_run_warning

    run_dir, steps = Path(args.run_dir or default_run_dir(args.config)), experiment.train.steps
    context = init_distributed(args.device)
    try:
        done = claim_run_dir(run_dir, experiment, accept_changes=args.accept_changes, record=context.is_main)
        if done >= steps:
            if context.is_main:
                print(f"{run_dir} is already at step {done} of {steps}: nothing to train (raise train.steps to go on)")
            return 0
        if experiment.licence and context.is_main:
            print(
                f"python -m diffbook train: note: {experiment.network.init_from} is licensed {experiment.licence}; "
                "this run's weights inherit it, and its checkpoints record it",
                file=sys.stderr,
            )
        train = experiment.train
        warning = short_run_warning(train.ema_halflife_images, train.batch_size, steps, train.ema_rampup_ratio)
        if warning and context.is_main and experiment.network.init_from is None:
            print(f"python -m diffbook train: warning: {warning}", file=sys.stderr)
        # Before anything is built: train.seed alone fixes the initial weights, so one command gives one model.
        seed_everything(experiment.train.seed)
        model = experiment.initial_model().to(context.device)
        objective, dataset = experiment.build_objective(model), experiment.build_dataset()
        trainer = Trainer(
            model,
            objective,
            dataset,
            experiment.train,
            run_dir,
            preview_fn(experiment),
            desc=str(args.config),
            record=experiment.record(),
        )
        trainer.fit()
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
    from diffbook.experiments.sampling import (
        SampleRequest,
        Shard,
        labels_by_seed,
        merge_shards,
        parse_int_ranges,
        sample_to_dir,
    )
    from diffbook.runtime import barrier, cleanup, init_distributed

    experiment = run_config(args.ckpt, args.config, args.overrides)
    if args.dry_run:
        print(experiment.to_yaml(), end="")
        return 0
    seeds = parse_int_ranges(args.seeds)
    labels: list[int] | None = None
    if args.class_labels == "random":
        labels = labels_by_seed(seeds, experiment.num_classes)
    elif args.class_labels:
        labels = parse_int_ranges(args.class_labels, "class labels")
    context = init_distributed(args.device)
    try:
        if len(seeds) < context.world_size:
            raise ValueError(f"{len(seeds)} seeds for {context.world_size} processes: give each one a seed at least")
        request = SampleRequest(seeds, args.batch, labels, str(context.device), args.vae, args.prompt)
        npz = sample_to_dir(args.ckpt, experiment, args.out, request, Shard(context.rank, context.world_size))
        barrier()
        if context.world_size > 1 and context.is_main:
            npz = merge_shards(args.out, seeds, context.world_size)
    finally:
        cleanup()
    if context.is_main:
        print(f"Wrote samples to {args.out}/ ({npz.name})")
    return 0


def _default_device() -> str:
    import torch

    if not torch.cuda.is_available():
        return "cpu"
    return f"cuda:{os.environ.get('LOCAL_RANK', 0)}"


def _evaluate(args: argparse.Namespace) -> int:
    from diffbook.metrics.protocols import protocol_metrics, read_samples

    if args.protocol != "clean":
        if args.ref_stats:
            raise ValueError(f"--ref-stats is clean-fid's; --protocol {args.protocol} reads its reference from --ref")
        samples = read_samples(args.samples)
        net = _feature_net("tf-inception", None, args.inception_weights)
        results = protocol_metrics(args.protocol, samples, args.ref, net, args.ref_root, args.batch)
        report = {
            "metrics": results,
            "samples": str(args.samples),
            "num_samples": len(samples),
            "reference": args.ref,
            "protocol": args.protocol,
            "features": "tf-inception",
        }
        return _save_report(args, report, args.protocol)
    from diffbook.metrics.features import (
        METRICS,
        extract_features,
        feature_metrics,
        metrics_needing_reference_features,
    )

    metrics = [name.strip() for name in args.metrics.split(",") if name.strip()]
    unknown = sorted(set(metrics) - set(METRICS))
    if unknown or not metrics:
        raise ValueError(f"unknown metrics {', '.join(unknown) or '(none given)'}; choose from {', '.join(METRICS)}")
    samples = read_samples(args.samples)
    net = _feature_net(args.features, args.ref_stats)
    sample_features, sample_logits = extract_features(net, samples, args.batch, progress="features of the samples")
    reference_features, reference_statistics = None, None
    if args.ref_stats:
        from diffbook.metrics.features import cleanfid_reference_statistics

        reference_statistics = cleanfid_reference_statistics(
            args.ref, samples.shape[-1], args.ref_stats, args.ref_split
        )
    if metrics_needing_reference_features(metrics, from_statistics=reference_statistics is not None):
        reference = _reference_images(args, samples)
        reference_features, _ = extract_features(net, reference, args.batch, progress="features of the reference")
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
    return _save_report(args, report, args.features)


def _save_report(args: argparse.Namespace, report: dict, name: str) -> int:
    """``report`` as JSON at --out (default: beside the samples, ``metrics-NAME.json``); its metrics printed."""
    samples = Path(args.samples)
    out = Path(args.out or (samples if samples.is_dir() else samples.parent) / f"metrics-{name}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["metrics"], indent=2))
    print(f"Saved {out}")
    return 0


def _feature_net(features: str, mode: str | None, weights: str | None = None):
    from diffbook.metrics.features import InceptionFeatures, load_digits_feature_net

    if features == "tf-inception":
        from diffbook.metrics.tf_inception import load_tf_inception

        return load_tf_inception(weights).to(_default_device())
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

    out = Path(args.out or Path(diffbook.__file__).parent / DIGITS_WEIGHTS)
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
    mirrored = " and their mirror images" if args.flip else ""
    print(f"Wrote the latents of {len(cast(Sized, dataset))} image(s){mirrored} to {out}/")
    return 0


def _import_release(args: argparse.Namespace) -> int:
    from diffbook.experiments.imports import import_release

    out, release = import_release(args.release, args.weights, args.out, args.config, args.overrides)
    print(f"python -m diffbook import: note: {release.notice()}", file=sys.stderr)
    print(f"Wrote {args.weights} as a checkpoint to sample (sample --ckpt) or fine-tune (network.init_from): {out}")
    return 0


def _export_diffusers(args: argparse.Namespace) -> int:
    from diffbook.experiments import run_config
    from diffbook.experiments.diffusers_export import export_for_diffusers

    experiment = run_config(args.ckpt, args.config)
    out = export_for_diffusers(experiment, experiment.load_checkpoint(args.ckpt), args.out)
    print(f"Wrote {out / 'unet'}/ and {out / 'scheduler'}/ for diffusers")
    return 0


def _fetch_inception(args: argparse.Namespace) -> int:
    from diffbook.runtime.files import fetch_to_cache, sha256_of

    if args.pytorch_fid:
        from diffbook.metrics.tf_inception import fetch_tf_inception_weights

        path = fetch_tf_inception_weights(args.source)
        print(f"Wrote {path} (SHA-256 {sha256_of(path)}); evaluate --protocol adm|edm checks it before every use")
        return 0
    from cleanfid.downloads_helper import inception_url

    from diffbook.metrics.features import INCEPTION_FILE

    path = fetch_to_cache(args.source or inception_url, INCEPTION_FILE)
    print(f"Wrote {path} (SHA-256 {sha256_of(path)}); evaluate --features inception checks it before every use")
    return 0


def _stamp(args: argparse.Namespace) -> int:
    from diffbook.booktools.project import stamp

    changed = stamp(Path(args.root))
    print(f"Stamped v{diffbook.__version__} into {len(changed)} file(s)" + "".join(f"\n  {path}" for path in changed))
    return 0


def _pdf(args: argparse.Namespace) -> int:
    from diffbook.booktools.pdf import print_pdf

    page = Path(args.html)
    if not page.is_file():
        raise FileNotFoundError(f"{page} not found: build the book first (make pdf runs the singlehtml build)")
    out = print_pdf(page.resolve().as_uri(), args.out)
    print(f"Wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")
    return 0
