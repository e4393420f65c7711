"""skfmcib: FMCIB cancer-imaging foundation-model features as scikit-learn estimators."""

from .patches import load_patches

__version__ = "0.1.0"

__all__ = ["__version__", "load_patches"]
