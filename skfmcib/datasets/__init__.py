"""Synthetic lesion cohorts and readers for lesion tables.

- :func:`make_lesion_cohort` writes a labelled cohort of synthetic CT scans
  (NIfTI, Hounsfield units) with lesions and returns the lesion table.
- :func:`read_reference_csv` reads a lesion table in the reference package's CSV
  format (``image_path, coordX, coordY, coordZ``), resolving relative paths.
"""

from ._cohort import DENSITIES, MARGINS, SITES, make_lesion_cohort
from ._csv import read_reference_csv

__all__ = ["DENSITIES", "MARGINS", "SITES", "make_lesion_cohort", "read_reference_csv"]
