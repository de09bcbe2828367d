"""Training of learned explainers: one generic loop (:mod:`camzoo.train.loop`) that L-CAM
(:mod:`camzoo.train.lcam`) and LFI-CAM plug into, and image-folder datasets with the training
augmentation (:mod:`camzoo.train.data`)."""
from .loop import TrainTask, fit, load_checkpoint, save_checkpoint

__all__ = ["TrainTask", "fit", "load_checkpoint", "save_checkpoint"]
