"""skfmcib: FMCIB cancer-imaging foundation-model features as scikit-learn estimators."""

__version__ = "0.1.0"
