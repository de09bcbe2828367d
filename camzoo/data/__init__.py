"""Images and datasets: robust reading (:mod:`.images`), dataset layouts, labels, subsets and
manifests (:mod:`.datasets`), ImageNet validation as torchvision, the devkit or Kaggle keep it
(:mod:`.imagenet`), published image lists (:mod:`.subsets`), and background loading
(:mod:`.loader`).

Internal: import from the module that defines a name; the public API is :mod:`camzoo`,
:mod:`camzoo.bench`, :mod:`camzoo.stats`, :mod:`camzoo.sanity`, :mod:`camzoo.metrics` and
:mod:`camzoo.train` (docs/architecture.md, "Public API").
"""
