"""The :class:`Backbone` (a frozen classifier plus what explainers and metrics need), the
:func:`capture` context manager for a layer's activation and gradient, and state-dict helpers.

Derived objects an explainer builds for one backbone (the channel count of a layer, a
BatchNorm-folded copy of the model, a loaded learned head bound to it) live in
``Backbone.cache``: they share the backbone's lifetime, so no module-level cache keeps a model
alive, and nothing is attached to the user's ``nn.Module``.

::

    with backbone.capture_layer("conv5", grad=True) as cap:
        logits = backbone.model(x.requires_grad_())
        logits.gather(1, y[:, None]).sum().backward()
    A, dA = cap.activation, cap.gradient        # [B,K,h,w] each

A layer whose output is not a feature map (a vision transformer's tokens) has an entry in
``Backbone.reshapes``; ``capture_layer`` applies it, so every reader sees ``[B,K,h,w]``.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Union

import numpy as np
import torch
from torch import Tensor, nn

from ..utils import load_torch_file

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
            ``[B,K,h,w]``, or becomes one through the layer's entry in ``reshapes``.
        default_layer: the last convolutional layer (the papers' choice); for vision
            transformers the last block's first norm (pytorch-grad-cam's advice, see
            :mod:`camzoo.models.tokens`).
        num_classes: number of logits.
        class_names: ``num_classes`` human-readable names.
        weights_id: where the weights came from plus a short content hash (for run configs).
        reshapes: per layer whose output is not a ``[B,K,h,w]`` map (the tokens of a vision
            transformer), the callable that turns the output into one (a
            :class:`camzoo.models.tokens.TokenLayout`, or any ``output -> [B,K,h,w]``
            callable). Every path that reads a layer applies it: :meth:`capture_layer`,
            :meth:`features_and_logits`, :meth:`channels`, and pytorch-grad-cam's
            ``reshape_transform`` (:meth:`reshape_of`). ``heads`` take the reshaped map.
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
    reshapes: Dict[str, Callable[[Tensor], Tensor]] = field(default_factory=dict, repr=False)
    #: derived objects built for this backbone (see the module docstring); not compared
    cache: Dict[Any, Any] = field(default_factory=dict, repr=False, compare=False)

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

    def picture(self, image) -> np.ndarray:
        """A PIL image as the model sees it (``preprocess``: resize, crop), for drawing: float32
        ``[H,W,3]`` in [0,1] on the host."""
        x = self.preprocess(image).unsqueeze(0).to(self.device)
        return self.denormalize(x)[0].clamp(0, 1).permute(1, 2, 0).float().cpu().numpy()

    # -- layers ------------------------------------------------------------------------
    def layer(self, name: Optional[str] = None) -> nn.Module:
        """The module named ``name`` (default: ``default_layer``); error lists valid names."""
        name = name or self.default_layer
        if name not in self.layers:
            raise ValueError(
                f"backbone {self.name!r} has no layer {name!r}; layers: {', '.join(self.layers)}"
            )
        return self.layers[name]

    def reshape_of(self, name: Optional[str] = None) -> Optional[Callable[[Tensor], Tensor]]:
        """How ``name``'s output becomes a ``[B,K,h,w]`` map (None: it already is one)."""
        name = name or self.default_layer
        self.layer(name)  # validates the name
        return self.reshapes.get(name)

    def capture_layer(self, name: Optional[str] = None, grad: bool = False,
                      detach: bool = False) -> "capture":
        """:class:`capture` of layer ``name`` (default: ``default_layer``) with its reshape:
        ``activation`` and ``gradient`` are ``[B,K,h,w]`` maps for every layer."""
        return capture(self.layer(name), grad=grad, detach=detach, reshape=self.reshape_of(name))

    def features(self, x: Tensor, layer: Optional[str] = None) -> Tensor:
        """Run the network up to ``layer`` and return its output ``[B,K,h,w]``.

        The rest of the network still runs (hooks cannot stop a forward early); use
        :meth:`features_and_logits` when the logits are needed too.
        """
        return self.features_and_logits(x, layer)[0]

    def features_and_logits(self, x: Tensor, layer: Optional[str] = None):
        """One forward: ``(features [B,K,h,w], logits [B,num_classes])``."""
        with self.capture_layer(layer) as cap:
            logits = self.model(x)
        return cap.activation, logits

    def channels(self, layer: Optional[str] = None) -> int:
        """Channels K of ``layer``'s output (cached in :attr:`cache` per layer).

        The first call for a layer runs one dry forward of a zero image ``[1,3,S,S]``
        (``S = input_size``) in eval mode on the model's device; later calls are free.
        """
        name = layer or self.default_layer
        key = ("channels", name)
        if key not in self.cache:
            s = int(self.input_size or 224)
            was_training = self.model.training
            self.model.eval()
            try:
                with torch.inference_mode(), self.capture_layer(name) as cap:
                    self.model(torch.zeros(1, 3, s, s, device=self.device))
            finally:
                self.model.train(was_training)
            self.cache[key] = int(cap.activation.shape[1])
        return self.cache[key]

    def head(self, features: Tensor, layer: Optional[str] = None) -> Tensor:
        """Run the rest of the network from ``layer``'s (reshaped) output ``[B,K,h,w]`` to logits."""
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


def freeze(model: nn.Module) -> nn.Module:
    """Eval mode and ``requires_grad=False`` for every parameter (in place); returns ``model``."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def hash_state_dict(sd: Dict[str, Tensor]) -> str:
    """Short content hash (16 hex digits) of a state dict: keys and raw tensor bytes."""
    h = hashlib.sha256()
    for k, v in sd.items():
        h.update(k.encode())
        t = v.detach().cpu().contiguous()
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def backbone_hash(bb: "Backbone") -> str:
    """Short content hash of ``bb.model``'s state dict (identifies a frozen backbone exactly)."""
    return hash_state_dict(bb.model.state_dict())


def load_state_dict_file(path: Union[str, os.PathLike]) -> Dict[str, Tensor]:
    """Read a state_dict file safely (``weights_only=True``, never anything else).

    A checkpoint that wraps its weights (``{"state_dict": ...}``, ``{"model": ...}``) is
    unwrapped, and a ``module.`` prefix (``DataParallel``) is removed. A missing, corrupt or
    unsafe file raises ``FileNotFoundError`` / ``ValueError`` naming it.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights file not found: {path}")
    sd = load_torch_file(path, "weights file")
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict) and not torch.is_tensor(sd.get(key)):
            sd = sd[key]
            break
    if not isinstance(sd, dict) or not sd or not all(torch.is_tensor(v) for v in sd.values()):
        got = type(sd).__name__ if not isinstance(sd, dict) else \
            f"a dict with keys {', '.join(map(str, list(sd)[:5]))}"
        raise ValueError(f"{path} does not hold a state_dict of tensors (got {got})")
    if all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def load_weights(model: nn.Module, sd: Dict[str, Tensor], source: str, name: str) -> None:
    """``model.load_state_dict(sd)`` with one clear message when the weights do not fit.

    Raises ``ValueError`` naming ``source`` (the file) and ``name`` (the architecture) and the
    first few missing, unexpected and wrongly shaped keys.
    """
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [f"{k} (file {tuple(sd[k].shape)}, model {tuple(own[k].shape)})" for k in own
              if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        def few(xs):
            return ", ".join(xs[:4]) + (f", ... ({len(xs)} in all)" if len(xs) > 4 else "")

        parts = [f"{len(missing)} missing key(s): {few(missing)}" if missing else "",
                 f"{len(unexpected)} unexpected key(s): {few(unexpected)}" if unexpected else "",
                 f"{len(shapes)} shape mismatch(es): {few(shapes)}" if shapes else ""]
        raise ValueError(f"weights {source} do not fit {name}: " + "; ".join(p for p in parts if p)
                         + " (a state_dict of another architecture?)")
    model.load_state_dict(sd)


class capture:  # noqa: N801 - used like a function: ``with capture(layer) as cap``
    """Record the forward output of ``module`` (last call) and its gradient if ``grad``.

    With ``reshape`` (a layer's entry in :attr:`Backbone.reshapes`), ``activation`` and
    ``gradient`` are the reshaped ``[B,K,h,w]`` maps; the gradient of a reshape that only
    selects and permutes elements is the reshaped gradient (pytorch-grad-cam applies its
    ``reshape_transform`` the same way). Prefer :meth:`Backbone.capture_layer`, which passes it.
    """

    def __init__(self, module: nn.Module, grad: bool = False, detach: bool = False,
                 reshape: Optional[Callable[[Tensor], Tensor]] = None) -> None:
        self.module = module
        self.grad = grad
        self.detach = detach
        self.reshape = reshape
        self.activation: Optional[Tensor] = None
        self.gradient: Optional[Tensor] = None
        self._handle = None

    def _hook(self, module: nn.Module, inputs, output: Tensor) -> None:
        rs = self.reshape
        act = output if rs is None else rs(output)
        self.activation = act.detach() if self.detach else act
        if self.grad and output.requires_grad:
            def _store(g: Tensor) -> None:
                g = g.detach()
                self.gradient = g if rs is None else rs(g)

            output.register_hook(_store)

    def __enter__(self) -> "capture":
        self._handle = self.module.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        return None


def hook_count(model: nn.Module) -> int:
    """Number of forward/backward/pre hooks left on any submodule (for leak tests)."""
    n = 0
    for m in model.modules():
        n += len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        n += len(getattr(m, "_backward_pre_hooks", {}))
    return n
