"""camzoo: benchmark CAM-style visual explainers of CNN image classifiers under one roof.

Public API::

    import camzoo
    bb = camzoo.load_backbone("efficientnet_lite0")        # embedded ImageNet default
    maps = camzoo.explain("gradcam", bb, x)                # x: [B,3,224,224] normalized
    run = camzoo.bench.run(camzoo.bench.BenchConfig(methods="gradcam,fakecam"))

The public API is this module's names and five modules, each name in one of them:
``camzoo.bench`` (runs), ``camzoo.stats`` (statistics of a run), ``camzoo.sanity`` (the
model-randomization check), ``camzoo.metrics`` (metric functions on tensors and the protocol
registry) and ``camzoo.train`` (the training loop for learned-explainer plugins). The
subpackages ``data``, ``models``, ``explainers``, ``results`` and ``engine`` are internal.

Layers (an import only points down; see docs/architecture.md): ``cli`` -> ``engine`` ->
``train`` -> ``results`` -> ``metrics`` -> ``explainers`` -> ``models`` -> ``data`` ->
``utils`` / ``registry``.
"""
from .version import __version__  # noqa: E402
from .explainers.base import Explainer, explain, get_explainer, list_explainers, register_explainer  # noqa: E402
from .data.images import load_image, sample_photos  # noqa: E402
from .models.backbone import Backbone  # noqa: E402
from .models.zoo import backbone_from_module, list_backbones, load_backbone  # noqa: E402

#: sub-packages and modules loaded on first use (they pull in pandas, sqlite, ...)
_LAZY = ("bench", "metrics", "sanity", "stats", "train")


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'camzoo' has no attribute {name!r}")


__all__ = [
    "__version__", "Backbone", "load_backbone", "list_backbones", "backbone_from_module",
    "Explainer", "explain", "get_explainer", "list_explainers", "register_explainer",
    "load_image", "sample_photos",
]
