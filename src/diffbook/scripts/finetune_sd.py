"""Fine-tune Stable Diffusion 2.1-base's U-Net with the self-perceptual objective, or the MSE baseline, via diffusers.

The paper's setting (Lin & Yang, arXiv 2401.00110; spec SP-D2): v-prediction on Stable Diffusion's scaled-linear
schedule (0.00085 to 0.012, T = 1000) rescaled to zero terminal SNR; sampling with DDIM on 50 "trailing" steps,
without guidance for the self-perceptual model and with guidance 7.5 and rescale 0.7 for the MSE baseline. The
package's process, objectives and sampler drive the diffusers U-Net (:class:`~diffbook.nets.DiffusersUNet`):
the VAE latents are the data ``x0`` and the text encoder's hidden states the condition. Two stages::

    # 1. MSE: SD 2.1-base (epsilon-prediction) becomes a v-prediction, zero-terminal-SNR model
    python -m diffbook.scripts.finetune_sd train --weights SD21 --data DATA --out runs/sd-mse --objective mse
    # 2. self-perceptual, from stage 1's U-Net, which is also its frozen perceptual network
    python -m diffbook.scripts.finetune_sd train --weights SD21 --init-unet runs/sd-mse/unet --data DATA \\
        --out runs/sd-sp
    # samples: guidance 0 for the self-perceptual model, 7.5 with rescale 0.7 for the MSE baseline
    python -m diffbook.scripts.finetune_sd sample --weights SD21 --unet runs/sd-sp/unet --prompt "a red bus" --out sp
    python -m diffbook.scripts.finetune_sd sample --weights SD21 --unet runs/sd-mse/unet --prompt "a red bus" \\
        --guidance-scale 7.5 --guidance-rescale 0.7 --out mse

``SD21`` is the diffusers folder of ``stabilityai/stable-diffusion-2-1-base`` (``unet/``, ``vae/``,
``text_encoder/``, ``tokenizer/``); ``DATA`` a folder of images, each with its caption in a ``.txt`` file of the
same name. Nothing is downloaded. ``--guidance-scale`` follows diffusers: at most 1 means no guidance (the
conditional prediction alone). The training defaults (lr, batch, EMA, steps) are placeholders: the paper's
values are unconfirmed (spec §6). Training runs on the package's Trainer: ``torchrun`` works, and a run resumes
from ``OUT/checkpoint.pt``; ``OUT/unet`` (the EMA weights when kept) and ``OUT/scheduler`` load in diffusers.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import Dataset
from torchvision import transforms

from diffbook.diffusion import DDPM, Denoiser
from diffbook.nets import DiffusersUNet
from diffbook.objectives import DenoisingLoss, SelfPerceptualLoss
from diffbook.runtime import cleanup, init_distributed
from diffbook.samplers import ddim_sample
from diffbook.samplers.guidance import GuidedDenoiser
from diffbook.train import TrainConfig, Trainer

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
WEIGHT_FOLDERS = ("unet", "vae", "text_encoder", "tokenizer")
# diffusers' scheduler for the result: the self-perceptual model card's (Hub file scheduler/scheduler_config.json).
SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    beta_schedule="scaled_linear",
    beta_start=0.00085,
    beta_end=0.012,
    prediction_type="v_prediction",
    rescale_betas_zero_snr=True,
    timestep_spacing="trailing",
    steps_offset=1,
    set_alpha_to_one=True,
    clip_sample=False,
)


def sd_process() -> DDPM:
    """The paper's process: scaled-linear betas 0.00085..0.012, T = 1000, zero terminal SNR, v-prediction."""
    return DDPM(
        T=1000, schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, prediction="v", zero_terminal_snr=True
    )


def check_weights(weights: str | Path) -> Path:
    """``weights`` as a Path, after checking that it is a diffusers Stable Diffusion folder."""
    weights = Path(weights)
    missing = [name for name in WEIGHT_FOLDERS if not (weights / name).is_dir()]
    if missing:
        raise FileNotFoundError(
            f"Stable Diffusion weights not found in {str(weights)!r} (missing {', '.join(m + '/' for m in missing)}): "
            "pass --weights with the diffusers folder of stabilityai/stable-diffusion-2-1-base, e.g. made by "
            "`hf download stabilityai/stable-diffusion-2-1-base --local-dir DIR` on a machine with internet access"
        )
    return weights


def image_caption_pairs(root: str | Path) -> list[tuple[Path, str]]:
    """``(image path, caption)`` for every image in ``root`` with a ``.txt`` caption of the same stem, sorted."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data folder {str(root)!r} not found: pass --data with images and .txt captions")
    images = sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {root}")
    uncaptioned = [p.name for p in images if not p.with_suffix(".txt").is_file()]
    if uncaptioned:
        raise FileNotFoundError(f"{len(uncaptioned)} image(s) in {root} have no .txt caption, e.g. {uncaptioned[0]}")
    return [(p, p.with_suffix(".txt").read_text().strip()) for p in images]


def tokenize(tokenizer, prompts: list[str]) -> Tensor:
    """``(N, L)`` token ids, padded and truncated to the tokenizer's length (77 for Stable Diffusion)."""
    length = tokenizer.model_max_length
    return tokenizer(prompts, padding="max_length", max_length=length, truncation=True, return_tensors="pt").input_ids


class ImageCaptionFolder(Dataset):
    """Items ``(pixels: (3, R, R) in [-1, 1], token ids: (L,))``: images resized and centre-cropped to ``R``."""

    def __init__(self, root: str | Path, tokenizer, resolution: int) -> None:
        self.pairs = image_caption_pairs(root)
        self.tokenizer = tokenizer
        self.transform = transforms.Compose(
            [
                transforms.Resize(resolution, interpolation=transforms.InterpolationMode.BICUBIC),
                transforms.CenterCrop(resolution),
                transforms.ToTensor(),
                transforms.Normalize([0.5], [0.5]),
            ]
        )

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        path, caption = self.pairs[index]
        with Image.open(path) as image:
            pixels = self.transform(image.convert("RGB"))
        return pixels, tokenize(self.tokenizer, [caption])[0]


@dataclass
class LatentTextObjective:
    """``base`` on VAE latents and text embeddings: ``batch = (pixels: (B, 3, R, R), token ids: (B, L))``.

    The VAE and the text encoder are frozen and held as plain attributes, out of the optimizer, the checkpoint
    and DistributedDataParallel, like the self-perceptual loss's frozen network.
    """

    base: Callable[..., dict[str, Tensor]]
    vae: nn.Module
    text_encoder: nn.Module

    def __call__(self, model: Denoiser, batch: tuple, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        pixels, tokens = batch
        with torch.no_grad():
            latents = self.vae.encode(pixels).latent_dist.sample() * self.vae.config.scaling_factor
            text = self.text_encoder(tokens)[0]
        return self.base(model, (latents, text), generator)


def load_components(weights: Path, unet_path: str | Path | None = None) -> dict[str, nn.Module]:
    """The U-Net (from ``unet_path`` when given), VAE, text encoder (frozen, eval) and tokenizer of ``weights``."""
    try:
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer
    except ImportError as error:
        raise ImportError("Stable Diffusion needs diffusers and transformers: pip install 'diffbook[sd]'") from error
    unet_path = Path(unet_path) if unet_path is not None else weights / "unet"
    if not unet_path.is_dir():
        raise FileNotFoundError(f"U-Net folder {str(unet_path)!r} not found")
    return {
        "unet": UNet2DConditionModel.from_pretrained(unet_path),
        "vae": AutoencoderKL.from_pretrained(weights / "vae").eval().requires_grad_(False),
        "text_encoder": CLIPTextModel.from_pretrained(weights / "text_encoder").eval().requires_grad_(False),
        "tokenizer": CLIPTokenizer.from_pretrained(weights / "tokenizer"),
    }


def _starting_prediction(weights: Path) -> str | None:
    config = weights / "scheduler" / "scheduler_config.json"
    return json.loads(config.read_text()).get("prediction_type") if config.is_file() else None


def build_objective(name: str, model: Denoiser, form: str, mse_weight: float) -> Callable[..., dict[str, Tensor]]:
    """The MSE baseline (v-prediction loss) or the self-perceptual loss frozen from ``model`` as it is now."""
    if name == "mse":
        return DenoisingLoss()
    if name == "self_perceptual":
        return SelfPerceptualLoss.from_model(model, form=form, mse_weight=mse_weight)
    raise ValueError(f"objective must be 'mse' or 'self_perceptual', got {name!r}")


def train(args: argparse.Namespace) -> int:
    """Fine-tune, then write ``OUT/unet`` (EMA weights when kept) and ``OUT/scheduler`` for diffusers."""
    weights = check_weights(args.weights)
    if args.objective == "self_perceptual" and args.init_unet is None and _starting_prediction(weights) == "epsilon":
        raise ValueError(
            "self-perceptual fine-tuning starts from a v-prediction, zero-terminal-SNR MSE model, and these weights "
            "predict epsilon: run --objective mse first and pass its OUT/unet as --init-unet"
        )
    context = init_distributed(args.device)
    try:
        parts = load_components(weights, args.init_unet)
        dataset = ImageCaptionFolder(args.data, parts["tokenizer"], args.resolution)
        if args.gradient_checkpointing:
            parts["unet"].enable_gradient_checkpointing()
        model = Denoiser(DiffusersUNet(parts["unet"]), sd_process()).to(context.device)
        objective = LatentTextObjective(
            build_objective(args.objective, model, args.form, args.mse_weight),
            parts["vae"].to(context.device),
            parts["text_encoder"].to(context.device),
        )
        config = TrainConfig(
            steps=args.steps,
            batch_size=args.batch_size,
            lr=args.lr,
            warmup_steps=args.warmup_steps,
            grad_clip=args.grad_clip,
            ema_halflife_images=args.ema_halflife_images,
            precision=args.precision,
            seed=args.seed,
            log_every=args.log_every,
            checkpoint_every=args.checkpoint_every,
            num_workers=args.num_workers,
        )
        result = Trainer(model, objective, dataset, config, args.out, desc=f"sd-{args.objective}").fit()
        if context.is_main:
            save_for_diffusers(result.ema if result.ema is not None else model, Path(args.out))
    finally:
        cleanup()
    if context.is_main:
        print(f"Fine-tuned U-Net in {Path(args.out) / 'unet'}/")
    return 0


def save_for_diffusers(model: Denoiser, out: Path) -> None:
    """``out/unet`` (diffusers format) and ``out/scheduler``: the card's DDIM trailing, zero-SNR, v-prediction."""
    from diffusers import DDIMScheduler

    model.net.unet.save_pretrained(out / "unet")
    DDIMScheduler(**SCHEDULER_CONFIG).save_pretrained(out / "scheduler")


@torch.no_grad()
def sample(args: argparse.Namespace) -> int:
    """Write one PNG per prompt and seed: DDIM from the zero-SNR step on ``--steps`` trailing steps."""
    weights = check_weights(args.weights)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    parts = load_components(weights, args.unet)
    vae, text_encoder = parts["vae"].to(device), parts["text_encoder"].to(device)
    model = Denoiser(DiffusersUNet(parts["unet"].eval()), sd_process()).to(device)
    tokenizer = parts["tokenizer"]
    null_text = text_encoder(tokenize(tokenizer, [""]).to(device))[0]
    # diffusers' convention: a scale of at most 1 is the conditional prediction alone.
    scale = args.guidance_scale if args.guidance_scale > 1 else 1.0
    denoiser = GuidedDenoiser(model, scale, args.guidance_rescale, null_text)
    latent_size = args.resolution // 2 ** (len(vae.config.block_out_channels) - 1)
    shape = (parts["unet"].config.in_channels, latent_size, latent_size)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for index, prompt in enumerate(args.prompt):
        text = text_encoder(tokenize(tokenizer, [prompt]).to(device))[0]
        for seed in range(args.seed, args.seed + args.num_images):
            noise = torch.randn(shape, generator=torch.Generator().manual_seed(seed))[None].to(device)
            latents = ddim_sample(denoiser, model.process, noise, args.steps, spacing="trailing", class_labels=text)
            image = vae.decode(latents.samples / vae.config.scaling_factor).sample[0]
            pixels = ((image.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
            Image.fromarray(pixels).save(out / f"prompt{index:03d}-seed{seed:06d}.png")
    print(f"Wrote {len(args.prompt) * args.num_images} image(s) to {out}/")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m diffbook.scripts.finetune_sd",
        description="Fine-tune Stable Diffusion 2.1-base with the self-perceptual objective (or MSE), and sample.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    fit = commands.add_parser("train", help="fine-tune the U-Net")
    fit.add_argument("--weights", required=True, help="diffusers folder of stabilityai/stable-diffusion-2-1-base")
    fit.add_argument("--data", required=True, help="folder of images, each with a same-named .txt caption")
    fit.add_argument("--out", required=True, help="run folder: checkpoint.pt, log.jsonl, then unet/ and scheduler/")
    fit.add_argument("--objective", choices=("self_perceptual", "mse"), default="self_perceptual")
    fit.add_argument("--init-unet", default=None, help="U-Net folder to start from (default: WEIGHTS/unet)")
    fit.add_argument("--form", choices=("paper", "same_noise"), default="paper", help="re-noising of the prediction")
    fit.add_argument("--mse-weight", type=float, default=0.0, help="added v-MSE weight (our extension; paper: 0)")
    fit.add_argument("--resolution", type=int, default=512)
    fit.add_argument("--steps", type=int, default=50_000, help="placeholder (unconfirmed, spec §6)")
    fit.add_argument("--batch-size", type=int, default=896, help="global batch; placeholder (unconfirmed)")
    fit.add_argument("--lr", type=float, default=3e-5, help="placeholder (unconfirmed)")
    fit.add_argument("--warmup-steps", type=int, default=0)
    fit.add_argument("--grad-clip", type=float, default=1.0)
    fit.add_argument(
        "--ema-halflife-images", type=float, default=1_241_809, help="default: decay 0.9995 per step of 896 images"
    )
    fit.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="bf16")
    fit.add_argument("--gradient-checkpointing", action="store_true", help="recompute U-Net activations (less memory)")
    fit.add_argument("--seed", type=int, default=0)
    fit.add_argument("--log-every", type=int, default=100)
    fit.add_argument("--checkpoint-every", type=int, default=1000)
    fit.add_argument("--num-workers", type=int, default=4)
    fit.add_argument("--device", default=None, help="default: this rank's GPU if there is one, else cpu")
    fit.set_defaults(run=train)

    draw = commands.add_parser("sample", help="sample images with DDIM (trailing steps, zero terminal SNR)")
    draw.add_argument("--weights", required=True, help="diffusers folder of stabilityai/stable-diffusion-2-1-base")
    draw.add_argument("--unet", default=None, help="fine-tuned U-Net folder (default: WEIGHTS/unet)")
    draw.add_argument("--prompt", action="append", required=True, help="a prompt; repeat for several")
    draw.add_argument("--out", required=True, help="folder for prompt{i}-seed{s}.png")
    draw.add_argument("--num-images", type=int, default=1, help="images per prompt, seeds SEED, SEED+1, ...")
    draw.add_argument("--seed", type=int, default=0)
    draw.add_argument("--steps", type=int, default=50)
    draw.add_argument("--guidance-scale", type=float, default=0.0, help="diffusers' convention: <= 1 is no guidance")
    draw.add_argument("--guidance-rescale", type=float, default=0.0, help="phi of Lin et al. (0.7 for the baseline)")
    draw.add_argument("--resolution", type=int, default=512)
    draw.add_argument("--device", default=None)
    draw.set_defaults(run=sample)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run a subcommand; errors a user can fix (missing weights or data) print one line and return 2."""
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError, ImportError) as error:
        print(f"finetune_sd {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
