"""TensorFlow's Inception-v3 FID graph (2015-12-05) in PyTorch, for ADM's evaluator and EDM's FID.

ADM's evaluator (Dhariwal & Nichol 2021, ``evaluations/evaluator.py``) and EDM's ``fid.py`` (Karras et al. 2022)
both read the TensorFlow graph ``classify_image_graph_def.pb`` of 2015-12-05: FID from ``pool_3`` (2048-d), sFID
from the first 7 channels of ``mixed_6/conv`` (17 x 17 x 7 = 2023-d), the Inception score from the softmax of
``pool_3 @ W`` (the logits' weight, no bias). :class:`TFInceptionV3` is that graph with torchvision's layer names,
so it loads pytorch-fid's port of the weights (``pt_inception-2015-12-05-6726825d.pth``) key for key. Where the
graph differs from torchvision's Inception-v3 it follows the graph:

- the average pools inside blocks A, C and the first E leave the zero padding out of the mean, and the last E
  block pools by max, not mean;
- the input is resized to 299 x 299 by TF1's ``ResizeBilinear`` (no half-pixel centres: output pixel ``i`` reads
  input ``i * in / out``), then mapped by ``(x - 128) / 128`` from [0, 255] (not torchvision's ``2 x - 1`` of
  [0, 1]);
- 1008 logits (the graph's class count), and no Dropout or auxiliary head.

How closely the numbers match the papers' tools, for the same images (not measured here: neither TensorFlow nor
the weights are available offline; the ``book/protocols.md`` page says how to check):

- FID (``pool``) and sFID (``spatial``): the graph, its weights, its resize and its normalisation are the same;
  what remains is float32 rounding in another convolution library (cuDNN or oneDNN, not TensorFlow's), about
  1e-6 of a feature, so FID and sFID should agree to the two decimals papers print. Convolutions run in full
  float32 even where PyTorch would round to TF32. pytorch-fid reports 0.08 of FID apart from TensorFlow, but it
  resizes with torch's half-pixel bilinear kernel, which samples other points; the resize here does not. Images
  already 299 x 299 are not resized at all.
- The Inception score (``logits``): the same weights without the bias, as ADM; the softmax is taken in float64
  here, so it agrees to about 1e-5 relative.
- Precision and recall read ``pool`` too, but ADM rounds the squared distances to float16 before comparing them
  with the neighbour radii; features near a ball's boundary can fall the other way here, so they agree to about
  0.01, not bit for bit (:func:`diffbook.metrics.protocols.adm_precision_recall`).
- EDM's FID: EDM's detector is a TorchScript translation of the same graph with the same resize, so its FID
  should agree to float32 rounding as well.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torchvision.models.inception import BasicConv2d, InceptionA, InceptionB, InceptionC, InceptionD, InceptionE

from diffbook.runtime.files import cached_file, fetch_to_cache, load_torch_file, load_weights

TF_INCEPTION_FILE = "pt_inception-2015-12-05-6726825d.pth"
TF_INCEPTION_URL = f"https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/{TF_INCEPTION_FILE}"
# Torch-hub file names end in the first hex digits of the file's SHA-256.
TF_INCEPTION_SHA256_PREFIX = "6726825d"
INPUT_SIZE = 299
SPATIAL_CHANNELS = 7  # ADM's sFID keeps the first 7 of mixed_6/conv's 192 channels


def _average_pool(x: Tensor) -> Tensor:
    # TensorFlow's SAME-padded average pool divides by the pixels inside the image, not by 9.
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


def _max_pool(x: Tensor) -> Tensor:
    return F.max_pool2d(x, kernel_size=3, stride=1, padding=1)


class TFInceptionA(InceptionA):
    """Block A (``mixed`` to ``mixed_2``) with TensorFlow's average pool: (B, C, 35, 35) -> (B, C', 35, 35)."""

    def forward(self, x: Tensor) -> Tensor:
        branch5x5 = self.branch5x5_2(self.branch5x5_1(x))
        branch3x3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch1x1(x), branch5x5, branch3x3dbl, self.branch_pool(_average_pool(x))], 1)


class TFInceptionC(InceptionC):
    """Block C (``mixed_4`` to ``mixed_7``) with TensorFlow's average pool: (B, 768, 17, 17) -> (B, 768, 17, 17).

    The output's first 192 channels are the 1x1 branch, the graph's ``mixed_N/conv``."""

    def forward(self, x: Tensor) -> Tensor:
        branch7x7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        branch7x7dbl = self.branch7x7dbl_1(x)
        for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            branch7x7dbl = layer(branch7x7dbl)
        return torch.cat([self.branch1x1(x), branch7x7, branch7x7dbl, self.branch_pool(_average_pool(x))], 1)


class TFInceptionE(InceptionE):
    """Block E (``mixed_9``, ``mixed_10``) with the graph's pool, ``pool``: (B, C, 8, 8) -> (B, 2048, 8, 8)."""

    def __init__(self, in_channels: int, pool: Callable[[Tensor], Tensor]) -> None:
        super().__init__(in_channels)
        self.pool = pool

    def forward(self, x: Tensor) -> Tensor:
        branch3x3 = self.branch3x3_1(x)
        branch3x3dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        branches = [
            self.branch1x1(x),
            self.branch3x3_2a(branch3x3),
            self.branch3x3_2b(branch3x3),
            self.branch3x3dbl_3a(branch3x3dbl),
            self.branch3x3dbl_3b(branch3x3dbl),
            self.branch_pool(self.pool(x)),
        ]
        return torch.cat(branches, 1)


def tf_resize_bilinear(images: Tensor, size: int) -> Tensor:
    """TF1's ``ResizeBilinear`` (no half-pixel centres): ``(B, C, H, W)`` -> ``(B, C, size, size)``, float.

    Output pixel ``i`` reads input ``i * H / size``, interpolated as TensorFlow does (width first, then height);
    torch's ``interpolate(mode="bilinear")`` reads ``(i + 0.5) * H / size - 0.5`` instead."""
    for dim in (3, 2):
        length = images.shape[dim]
        source = torch.arange(size, dtype=torch.float32, device=images.device) * (length / size)
        lower = source.floor()
        weight = (source - lower).view(-1, *[1] * (3 - dim)).to(images.dtype)
        lower_index = lower.long()
        upper_index = (lower_index + 1).clamp(max=length - 1)
        images = torch.lerp(images.index_select(dim, lower_index), images.index_select(dim, upper_index), weight)
    return images


class TFInceptionV3(nn.Module):
    """The 2015-12-05 TensorFlow Inception-v3 graph: uint8-range images -> pool, spatial and logit features.

    Input: ``(B, 3, H, W)`` (or ``(B, 1, H, W)``, repeated to RGB), uint8 or float in [0, 255], any size.
    Output: ``pool (B, 2048)`` (``pool_3``), ``spatial (B, 2023)`` (``mixed_6/conv[..., :7]`` flattened in TF's
    H, W, C order, as ADM's reference statistics are) and ``logits (B, 1008)`` (``pool @ W``, without the bias).
    """

    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.Mixed_5b = TFInceptionA(192, pool_features=32)
        self.Mixed_5c = TFInceptionA(256, pool_features=64)
        self.Mixed_5d = TFInceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = TFInceptionC(768, channels_7x7=128)
        self.Mixed_6c = TFInceptionC(768, channels_7x7=160)
        self.Mixed_6d = TFInceptionC(768, channels_7x7=160)
        self.Mixed_6e = TFInceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = TFInceptionE(1280, pool=_average_pool)
        self.Mixed_7c = TFInceptionE(2048, pool=_max_pool)
        self.fc = nn.Linear(2048, 1008)

    def preprocess(self, images: Tensor) -> Tensor:
        """``(B, 1 or 3, H, W)`` in [0, 255] -> ``(B, 3, 299, 299)`` float32 in [-1, 1], as the graph's first ops."""
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"TF-Inception reads (B, 3, H, W) or (B, 1, H, W) images, got {tuple(images.shape)}")
        x = images.float().expand(-1, 3, -1, -1)
        if x.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
            x = tf_resize_bilinear(x, INPUT_SIZE)
        return (x - 128) / 128

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        with _float32_convolutions():
            return self._features(self.preprocess(images))

    def _features(self, x: Tensor) -> dict[str, Tensor]:
        """``x: (B, 3, 299, 299)``, preprocessed -> the three outputs of :meth:`forward`."""
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(F.max_pool2d(x, kernel_size=3, stride=2)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Mixed_5d(self.Mixed_5c(self.Mixed_5b(x)))
        x = self.Mixed_6d(self.Mixed_6c(self.Mixed_6b(self.Mixed_6a(x))))
        # mixed_6/conv is Mixed_6d's 1x1 branch, the first channels of its output.
        spatial = x[:, :SPATIAL_CHANNELS].permute(0, 2, 3, 1).flatten(1)
        x = self.Mixed_7c(self.Mixed_7b(self.Mixed_7a(self.Mixed_6e(x))))
        pool = x.mean(dim=(2, 3))
        return {"pool": pool, "spatial": spatial, "logits": pool @ self.fc.weight.T}


@contextmanager
def _float32_convolutions() -> Iterator[None]:
    """cuDNN convolutions in full float32 inside the block. On Ampere and later GPUs PyTorch lets them round their
    inputs to TF32 (a 10-bit mantissa) by default, which moves features by about 1e-3 relative; the graph is
    float32. (TensorFlow 2.4 and later do the same unless told not to, so ADM's own evaluator gives slightly other
    numbers on such GPUs than on older ones.)"""
    allowed = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = allowed


def _fetch_advice() -> str:
    return (
        f"run python -m diffbook fetch-inception --pytorch-fid, which downloads {TF_INCEPTION_URL}; offline, "
        f"download it elsewhere and run fetch-inception --pytorch-fid --from FILE, or pass --inception-weights FILE"
    )


def tf_inception_weights() -> Path:
    """pytorch-fid's weights in diffbook's cache, checked against the SHA-256 recorded when they were fetched.

    A missing file raises FileNotFoundError naming the file, its URL and how to put it there."""
    try:
        return cached_file(TF_INCEPTION_FILE, _fetch_advice())
    except FileNotFoundError as missing:
        raise FileNotFoundError(f"pytorch-fid's TF-Inception weights: {missing}") from None


def fetch_tf_inception_weights(source: str | None = None) -> Path:
    """Copy pytorch-fid's weights (from ``source``, a URL or a file; default its release URL) into the cache.

    A file whose SHA-256 does not start with the digits in its release name is refused (ValueError), and a
    good file cached before is kept."""
    return fetch_to_cache(source or TF_INCEPTION_URL, TF_INCEPTION_FILE, TF_INCEPTION_SHA256_PREFIX)


def load_tf_inception(path: str | Path | None = None) -> TFInceptionV3:
    """:class:`TFInceptionV3` in eval mode with pytorch-fid's weights: the cached file, or the one at ``path``.

    Every key must match in name and shape; the error names those that do not."""
    source = Path(path) if path is not None else tf_inception_weights()
    if not source.is_file():
        raise FileNotFoundError(f"{source} not found: pytorch-fid's TF-Inception weights are at {TF_INCEPTION_URL}")
    what = "pytorch-fid's TF-Inception weights"
    weights = load_torch_file(source, what, _fetch_advice())
    net = TFInceptionV3()
    # BatchNorm's batch counters do not change an eval-mode forward; files saved by older PyTorch lack them.
    counters = {key: value for key, value in net.state_dict().items() if key.endswith("num_batches_tracked")}
    load_weights(net, {**counters, **weights}, source, f"expected {what} ({TF_INCEPTION_FILE})")
    return net.eval()
