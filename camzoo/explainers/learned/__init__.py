"""Learned explainers: checkpoints (:mod:`.checkpoint`), L-CAM heads and their loss
(:mod:`.lcam`), and the LFI-CAM model (:mod:`.lficam`). The training loops live in
:mod:`camzoo.train` and import these, never the reverse."""
from . import lcam, lficam  # noqa: F401  (registers lcam-fm, lcam-img, lficam)
