"""Images and datasets: robust reading (:mod:`.images`), dataset layouts, labels, subsets and
manifests (:mod:`.datasets`), ImageNet validation as torchvision, the devkit or Kaggle keep it
(:mod:`.imagenet`), published image lists (:mod:`.subsets`), and background loading
(:mod:`.loader`)."""
from .datasets import Dataset, ImageItem, files_dataset, imagenet_wnids, open_dataset, subset
from .images import IMAGE_EXTENSIONS, ImageReadError, list_images, load_image, sample_photos, to_rgb
from .loader import LoadedBatch, Prefetcher
from .subsets import SUBSETS, read_subset

__all__ = ["Dataset", "ImageItem", "files_dataset", "imagenet_wnids", "open_dataset", "subset", "IMAGE_EXTENSIONS",
           "ImageReadError", "list_images", "load_image", "sample_photos", "to_rgb", "LoadedBatch",
           "Prefetcher", "SUBSETS", "read_subset"]
