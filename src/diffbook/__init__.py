"""diffbook: a book and a PyTorch package that teach and reproduce five diffusion-model papers."""

from diffbook.profiles import PROFILES, current_profile, pick, seed_everything

__version__ = "0.1.0"
__all__ = ["PROFILES", "current_profile", "pick", "seed_everything", "__version__"]
