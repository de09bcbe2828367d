"""The Explainer base class and the map post-processing every explainer shares.

Conventions (the L-CAM paper's protocol):

- CAM-style methods (Grad-CAM family, L-CAM, LFI-CAM) min-max normalize at feature
  resolution, then upsample bilinearly (``align_corners=False``) to the input size:
  :func:`cam_to_map`.
- Perturbation methods (Score-CAM, RISE) work at input resolution and min-max last:
  :func:`minmax`.
- A constant map (no information) becomes all zeros; maps are float32 and NaN-free.
"""
from __future__ import annotations

import contextlib
from typing import Any, ClassVar, Dict, Iterator, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..registry import EXPLAINER_ENTRY_POINT_GROUP, Registry
from ..utils import check_amp, check_options

EXPLAINERS: Registry[type] = Registry("explainer", EXPLAINER_ENTRY_POINT_GROUP)


def register_explainer(cls: type) -> type:
    """Class decorator adding an :class:`Explainer` subclass to the registry by its ``name``."""
    EXPLAINERS.add(cls.name, cls)
    return cls


def minmax(maps: Tensor, eps: float = 0.0) -> Tensor:
    """Per-sample min-max of ``[B,...]`` maps to [0,1]; constant (or non-finite) maps -> 0.

    Differentiable: a constant map has zero gradient, never NaN (the unselected branch of
    the ``where`` stays finite).

    Args:
        maps: float tensor ``[B,...]`` (any range; NaN/inf treated as 0).
        eps: added to the range in the denominator (0 = exact min-max).
    Returns:
        float32 tensor of the same shape in [0,1].
    """
    m = torch.nan_to_num(maps.float(), nan=0.0, posinf=0.0, neginf=0.0)
    flat = m.reshape(m.shape[0], -1)
    lo = flat.amin(dim=1, keepdim=True)
    hi = flat.amax(dim=1, keepdim=True)
    rng = hi - lo
    scaled = (flat - lo) / (rng + eps).clamp_min(torch.finfo(rng.dtype).tiny)
    out = torch.where(rng > 0, scaled, torch.zeros_like(flat))
    return out.clamp(0.0, 1.0).reshape(m.shape)


def upsample(maps: Tensor, size: Tuple[int, int]) -> Tensor:
    """Bilinear (``align_corners=False``) resize of ``[B,h,w]`` maps to ``[B,*size]``."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]


def cam_to_map(cam: Tensor, size: Tuple[int, int], relu: bool = True) -> Tensor:
    """Feature-resolution CAM ``[B,h,w]`` -> map ``[B,*size]`` in [0,1]: ReLU, min-max, upsample."""
    if relu:
        cam = F.relu(cam)
    return upsample(minmax(cam), size).clamp_(0.0, 1.0)


#: map values this close to [0,1] are float rounding and are clamped into it
MAP_TOLERANCE = 1e-5


def valid_maps(maps: Tensor) -> Tensor:
    """Which maps keep the contract: finite and within [0,1] everywhere.

    Args:
        maps: ``[B,H,W]`` (any float dtype).
    Returns:
        bool ``[B]``.
    """
    flat = maps.reshape(maps.shape[0], -1)
    return (torch.isfinite(flat) & (flat >= 0) & (flat <= 1)).all(dim=1)


def describe_invalid(V: Tensor) -> str:
    """Why one map ``[H,W]`` breaks the contract, e.g. ``"12 NaN, min -0.5"``."""
    parts = []
    n_nan, n_inf = int(torch.isnan(V).sum()), int(torch.isinf(V).sum())
    if n_nan:
        parts.append(f"{n_nan} NaN")
    if n_inf:
        parts.append(f"{n_inf} Inf")
    finite = V[torch.isfinite(V)]
    if finite.numel():
        lo, hi = float(finite.min()), float(finite.max())
        if lo < 0:
            parts.append(f"min {lo:.4g}")
        if hi > 1:
            parts.append(f"max {hi:.4g}")
    return "map not finite or outside [0,1]: " + ", ".join(parts)


class Explainer:
    """Base class of every explainer.

    Subclasses set ``name``, ``defaults`` (option -> default value) and implement
    :meth:`_explain` and :meth:`forward_passes`. Options are given at construction
    (``Explainer(**options)``); unknown options are rejected with the valid ones listed.
    """

    name: ClassVar[str] = ""
    defaults: ClassVar[Dict[str, Any]] = {}
    #: learned explainers need a training artifact (``checkpoint=...``) before they work
    needs_checkpoint: ClassVar[bool] = False
    #: True when the maps depend on gradients (explain() then enables autograd)
    uses_gradients: ClassVar[bool] = False
    #: True when ``_explain`` changes its ``x`` or ``y`` in place: the engine then hands it a
    #: copy (an undeclared change is detected, the batch restored and the method failed)
    modifies_input: ClassVar[bool] = False
    #: one-line description for ``camzoo list``
    summary: ClassVar[str] = ""

    def __init__(self, **options: Any) -> None:
        # unknown names and values of the wrong type are refused, naming the option; options
        # shared by several explainers are checked here, once (an explainer checks its own)
        self.options: Dict[str, Any] = check_options(f"explainer {self.name!r}", self.defaults, options)
        if "amp" in self.options:
            check_amp(self.options["amp"], f"{self.name}: amp")

    def check_backbone(self, model) -> None:
        """Refuse, before any map is made, options that cannot work with backbone ``model``.

        The engine calls it for every method before it creates a run directory (like
        :meth:`camzoo.metrics.Protocol.check_backbone`). The base class checks the ``layer``
        option of an explainer that has one; a learned explainer also loads and checks its
        checkpoint (missing, unreadable, or trained for another setup). Raises ``ValueError``
        naming the method, the option and why (:meth:`option_errors`).
        """
        if "layer" in self.options:
            with self.option_errors("layer"):
                model.layer(self.options["layer"])  # validates, listing the valid layers

    @contextlib.contextmanager
    def option_errors(self, key: str) -> Iterator[None]:
        """Turn an ``OSError`` / ``ValueError`` / ``KeyError`` raised inside into one
        ``ValueError``: ``"<method>: option <key>=<value>: <why>"``."""
        try:
            yield
        except (OSError, ValueError, KeyError) as exc:
            why = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
            for prefix in (f"{self.name}: ", f"{self.name} "):  # said once
                if why.startswith(prefix):
                    why = why[len(prefix):]
                    break
            raise ValueError(f"{self.name}: option {key}={self.options.get(key)!r} cannot be "
                             f"used: {why}") from None

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return f"{type(self).__name__}({opts})"

    def forward_passes(self, model) -> int:
        """Forward passes of ``model`` needed per image to make one map (#FW column)."""
        raise NotImplementedError

    def evaluated_backbone(self, model):
        """The classifier whose decisions the metrics evaluate for this explainer.

        Post-hoc explainers explain ``model`` itself (the default). An explainer that *is*
        its own classifier (an end-to-end LFI-CAM checkpoint) returns that classifier as a
        Backbone, and the engine computes Y, c and every perturbed forward with it.
        """
        return model

    def explain(self, model, x: Tensor, y: Optional[Tensor] = None) -> Tensor:
        """Saliency maps for ``x`` and classes ``y``.

        Args:
            model: a :class:`camzoo.Backbone`.
            x: normalized float batch ``[B,3,H,W]`` on the model's device.
            y: LongTensor ``[B]`` of classes to explain; ``None`` = the model's top-1.
        Returns:
            float32 ``[B,H,W]`` on ``x.device``: in [0,1] (a constant map is all zeros) for
            every built-in explainer; a broken plugin's invalid values are not hidden (see
            :meth:`finish_maps`, :func:`valid_maps`).
        Raises:
            ValueError: a bad ``x`` / ``y``, or maps of the wrong shape (naming the method).
        """
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"x must be a normalized batch [B,3,H,W]; got shape {tuple(x.shape)}")
        x = x.detach()
        if y is None:
            y = predict(model, x)
        else:
            y = torch.as_tensor(y, dtype=torch.long, device=x.device).reshape(-1)
            if y.numel() == 1 and x.shape[0] > 1:
                y = y.expand(x.shape[0])
            if y.shape[0] != x.shape[0]:
                raise ValueError(f"y has {y.shape[0]} classes for a batch of {x.shape[0]} images")
        model.check_classes(y)
        return self.finish_maps(self._explain(model, x, y), x)

    def finish_maps(self, maps: Tensor, x: Tensor) -> Tensor:
        """Check the maps of ``x`` and make them float32.

        Raises ``ValueError`` naming the method, the expected ``[B,H,W]`` and the actual shape.
        Values within :data:`MAP_TOLERANCE` of [0,1] (float rounding of an upsampling, say)
        are clamped into it; anything else (NaN, Inf, clearly negative or above 1) is left as
        it is, so that :func:`valid_maps` can flag it: the engine never scores such a map.
        """
        want = (x.shape[0], x.shape[2], x.shape[3])
        if tuple(maps.shape) != want:
            raise ValueError(f"explainer {self.name!r} returned maps of shape {tuple(maps.shape)} "
                             f"for a batch of shape {tuple(x.shape)}; expected [B,H,W] = {want}")
        maps = maps.float()
        near = torch.isfinite(maps) & (maps >= -MAP_TOLERANCE) & (maps <= 1.0 + MAP_TOLERANCE)
        return torch.where(near, maps.clamp(0.0, 1.0), maps)

    __call__ = explain

    def _explain(self, model, x: Tensor, y: Tensor) -> Tensor:
        raise NotImplementedError


@torch.inference_mode()
def predict(model, x: Tensor) -> Tensor:
    """Top-1 classes ``[B]`` (LongTensor) of ``model`` for the normalized batch ``x``."""
    return model.model(x).argmax(dim=1)


def get_explainer(name: str, **options: Any) -> Explainer:
    """Instantiate the explainer ``name`` with ``options`` (unknown names/options list the valid
    ones). ``name`` may be parametrized, e.g. ``"blur:gradcam"`` (the ``blur:<method>`` control
    of :mod:`camzoo.explainers.controls`)."""
    cls = EXPLAINERS.get(name)
    return cls(**options)


def list_explainers() -> List[str]:
    """Names of all registered explainers, built-in and plugins, then one example name of each
    parametrized family (``blur:gradcam`` stands for ``blur:<method>``)."""
    return EXPLAINERS.names() + [f.example for f in EXPLAINERS.families().values()]


def explain(method: str, model, x: Tensor, y: Optional[Tensor] = None, **options: Any) -> Tensor:
    """Saliency maps of ``model`` for the batch ``x``.

    Args:
        method: explainer name, e.g. ``"gradcam"`` (see :func:`list_explainers`).
        model: a :class:`camzoo.Backbone`.
        x: normalized float batch ``[B,3,H,W]`` on the model's device.
        y: LongTensor ``[B]`` of classes; ``None`` explains the model's top-1 ("model truth").
        **options: explainer options, e.g. ``layer="conv5"``, ``n_masks=8000``.
    Returns:
        float32 ``[B,H,W]`` maps in [0,1] at input resolution; a constant map is all zeros.
    """
    return get_explainer(method, **options).explain(model, x, y)
