"""Pretrain an encoder on your own lesions with the FMCIB contrastive recipe.

Every seed point gives a positive patch (around the seed) and a mined negative
(a random body patch at least 50 mm away in the same scan); the encoder learns
to tell two augmented views of each patch from all the others. The checkpoint
then works everywhere the official weights do.

Run::

    python examples/pretrain.py

The same from the command line (resumable; ``torchrun --nproc-per-node=N`` for
several GPUs)::

    skfmcib pretrain cohort/cohort.csv --out ssl.pt --arch resnet50 --epochs 100

``SKFMCIB_QUICK=1`` makes everything tiny, to check the script runs in seconds.
"""

import os
import tempfile
from pathlib import Path

from skfmcib.datasets import make_lesion_cohort
from skfmcib.pretrain import pretrain
from skfmcib.transformer import FMCIBTransformer

QUICK = os.environ.get("SKFMCIB_QUICK") == "1"
workdir = Path(tempfile.mkdtemp(prefix="skfmcib_pretrain_"))

# 1. Seed points: any lesion table (image_path, coordX, coordY, coordZ in LPS mm).
quick_cohort = dict(spacing=(1.6, 1.6, 3.0)) if QUICK else {}  # coarse voxels: fast
table = make_lesion_cohort(6 if QUICK else 200, workdir / "cohort", random_state=0, **quick_cohort)

# 2. Pretrain. The checkpoint is rewritten after every epoch; calling pretrain again
#    with the same arguments resumes an interrupted run.
if QUICK:
    settings = dict(arch={"arch": "resnet10", "widen_factor": 0.125}, epochs=1, batch_size=4)
else:
    # The FMCIB ResNet-50 (4096 features); the paper used 100 epochs, batch 32 x 2 GPUs.
    settings = dict(arch="resnet50", epochs=100, batch_size=32, volume_cache=16)
checkpoint = pretrain(table, workdir / "ssl.pt", **settings, random_state=0)

# 3. Use it like the official weights: frozen features (or FMCIBClassifier(weights=...)).
features = FMCIBTransformer(weights=str(checkpoint)).fit_transform(table)
print(f"{checkpoint}: features of shape {features.shape}")
