"""Images with captions, for text-to-image fine-tuning: a folder of images, each with a ``.txt`` caption of the
same name, tokenised by the text model's tokenizer (Stable Diffusion's CLIP tokenizer)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset
from torchvision import transforms

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
CAPTION_DATA = "image_captions"


def image_caption_pairs(root: str | Path) -> list[tuple[Path, str]]:
    """``(image path, caption)`` for every image in ``root`` with a ``.txt`` caption of the same stem, sorted."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data folder {str(root)!r} not found: set data.root to images with .txt captions")
    images = sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {root}")
    uncaptioned = [p.name for p in images if not p.with_suffix(".txt").is_file()]
    if uncaptioned:
        raise FileNotFoundError(f"{len(uncaptioned)} image(s) in {root} have no .txt caption, e.g. {uncaptioned[0]}")
    return [(p, p.with_suffix(".txt").read_text().strip()) for p in images]


def tokenize(tokenizer: Any, prompts: list[str]) -> Tensor:
    """``(N, L)`` token ids, padded and truncated to the tokenizer's length (77 for Stable Diffusion)."""
    length = tokenizer.model_max_length
    return tokenizer(prompts, padding="max_length", max_length=length, truncation=True, return_tensors="pt").input_ids


def load_tokenizer(folder: str | Path) -> Any:
    """The CLIP tokenizer saved in ``folder``."""
    try:
        from transformers import CLIPTokenizer
    except ImportError as error:
        raise ImportError("Stable Diffusion needs diffusers and transformers: pip install 'diffbook[sd]'") from error
    return CLIPTokenizer.from_pretrained(folder)


class ImageCaptionFolder(Dataset):
    """Items ``(pixels: (3, R, R) in [-1, 1], token ids: (L,))``: images resized and centre-cropped to ``R``."""

    def __init__(self, root: str | Path, tokenizer: Any, resolution: int) -> None:
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


@dataclass(frozen=True)
class CaptionData:
    """``data.name: image_captions``: the folder ``root`` at ``resolution`` pixels, captions tokenised by the
    tokenizer of the network's weights (``network.weights``/tokenizer), or of ``tokenizer`` when given."""

    name: str
    root: str
    resolution: int = 512
    tokenizer: str | None = None

    def build(self, seed: int, labelled: bool, weights: str | None = None) -> Dataset:
        if self.tokenizer is None and weights is None:
            raise ValueError("data.tokenizer is unset and the network has no weights folder to take it from")
        folder = self.tokenizer or Path(str(weights)) / "tokenizer"
        return ImageCaptionFolder(self.root, load_tokenizer(folder), self.resolution)
