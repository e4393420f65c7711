"""skfmcib: FMCIB cancer-imaging foundation-model features as scikit-learn estimators.

The data flow, one module per step: :mod:`skfmcib.io` (CT images) ->
:mod:`skfmcib.patches` (the reference's 50 mm patches) -> :mod:`skfmcib.encoder`
(the 3D ResNet) with :mod:`skfmcib.weights` (checkpoints) -> estimators
(:class:`FMCIBTransformer`; fine-tuning in :mod:`skfmcib.finetune`, pretraining in
:mod:`skfmcib.pretrain`, downstream tasks in :mod:`skfmcib.tasks`).
"""

from importlib import import_module

from ._process import gc_paused

with gc_paused():  # scikit-learn and SciPy create many long-lived objects
    from .patches import load_patches
    from .transformer import FMCIBTransformer

__version__ = "0.1.0"

# Imported on first use: they pull in scikit-survival and the training code. No name
# here is also a submodule's (importing ``skfmcib.pretrain`` would rebind it): the
# pretraining function is ``skfmcib.pretrain.pretrain``.
_LAZY = {
    "FMCIBClassifier": "skfmcib.finetune",
    "FMCIBSurvivalAnalysis": "skfmcib.finetune",
    "RadiomicsTransformer": "skfmcib.radiomics",
    "make_lesion_cohort": "skfmcib.datasets",
}

__all__ = ["FMCIBTransformer", "__version__", "load_patches", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'skfmcib' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
