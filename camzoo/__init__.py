"""camzoo: benchmark CAM-style visual explainers of CNN image classifiers under one roof.

Public API::

    import camzoo
    bb = camzoo.load_backbone("efficientnet_lite0")        # embedded ImageNet default
    maps = camzoo.explain("gradcam", bb, x)                # x: [B,3,224,224] normalized
    run = camzoo.bench.run(camzoo.bench.BenchConfig(methods="gradcam,fakecam"))

Layers (an import only points down; see docs/architecture.md): ``cli`` -> ``engine`` ->
``train`` -> ``results`` -> ``metrics`` -> ``explainers`` -> ``models`` -> ``data`` ->
``utils`` / ``registry``.
"""
from .version import __version__  # noqa: E402
from .explainers import Explainer, explain, get_explainer, list_explainers, register_explainer  # noqa: E402
from .models import Backbone, backbone_from_module, list_backbones, load_backbone  # noqa: E402

#: sub-packages and modules loaded on first use (they pull in pandas, sqlite, ...)
_LAZY = ("bench", "data", "engine", "metrics", "models", "results", "sanity", "stats", "train", "utils")


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'camzoo' has no attribute {name!r}")


__all__ = [
    "__version__", "Backbone", "load_backbone", "list_backbones", "backbone_from_module",
    "Explainer", "explain", "get_explainer", "list_explainers", "register_explainer",
]
