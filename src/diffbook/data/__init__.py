"""Data: two-dimensional toy distributions (some with closed-form densities), image datasets and image grids."""

from diffbook.data.grid import image_grid, save_image_grid
from diffbook.data.images import (
    IMAGE_DATASETS,
    DatasetNotFoundError,
    ImageDatasetSpec,
    class_names,
    info,
    load_image_dataset,
    stack_dataset,
)
from diffbook.data.latents import LatentDataset
from diffbook.data.loaders import ImageTransform
from diffbook.data.toy2d import (
    TOY_DATASETS,
    Banana,
    Checkerboard,
    Density,
    GaussianMixture,
    density,
    eight_gaussians_mixture,
    gaussian,
    has_density,
    sample_toy,
    twenty_five_gaussians_mixture,
)

__all__ = [
    "IMAGE_DATASETS",
    "TOY_DATASETS",
    "Banana",
    "Checkerboard",
    "DatasetNotFoundError",
    "Density",
    "GaussianMixture",
    "ImageDatasetSpec",
    "ImageTransform",
    "LatentDataset",
    "class_names",
    "density",
    "eight_gaussians_mixture",
    "gaussian",
    "has_density",
    "image_grid",
    "info",
    "load_image_dataset",
    "sample_toy",
    "save_image_grid",
    "stack_dataset",
    "twenty_five_gaussians_mixture",
]
