"""skfmcib: FMCIB cancer-imaging foundation-model features as scikit-learn estimators.

The data flow, one module per step: :mod:`skfmcib.io` (CT images) ->
:mod:`skfmcib.patches` (the reference's 50 mm patches) -> :mod:`skfmcib.encoder`
(the 3D ResNet) with :mod:`skfmcib.weights` (checkpoints) -> estimators
(:class:`FMCIBTransformer`).
"""

from .patches import load_patches
from .transformer import FMCIBTransformer

__version__ = "0.1.0"

__all__ = ["FMCIBTransformer", "__version__", "load_patches"]
