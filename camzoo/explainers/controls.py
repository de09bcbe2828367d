"""Controls: maps that tell a metric from a method (issue 26).

Song et al. (2023) found that blurring a map, which adds no information about the model, raises
its ROAR / ROAD scores. These explainers sit behind the same ``explain()`` and registry as the
real methods, so a benchmark can ask what a metric gives a map that knows nothing:

- ``blur:<method>``: any registered method's map, Gaussian-blurred (``sigma`` pixels of the
  input, default 8), then min-maxed. A parametrized name (``Registry.add_family``): the inner
  method's options pass through (``get_explainer("blur:gradcam", sigma=4, layer="blocks")``);
  forward passes, the evaluated classifier and the backbone checks are the inner method's.
- ``centre``: a centred isotropic Gaussian (``sigma`` a fraction of the shorter side, default
  0.25), the same for every image; no model, ``forward_passes = 0``.
- ``random``: uniform noise, one independent field per image drawn from ``seed`` and a hash of
  the image's values (not of its position in the batch); ``forward_passes = 0``.

docs/explainers.md ("Controls") justifies the defaults; docs/metrics.md ("Controls: what a
metric gives a map that knows nothing") has a study of which metrics reward them.
"""
from __future__ import annotations

import hashlib
import math
from typing import Any, ClassVar, Dict, List, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..registry import UnknownNameError
from .base import EXPLAINERS, Explainer, minmax, register_explainer, valid_maps

#: scipy.ndimage.gaussian_filter's default: the kernel's radius is ``int(4 * sigma + 0.5)``
TRUNCATE = 4.0


# -- the blur -------------------------------------------------------------------------------------
def gaussian_kernel1d(sigma: float, radius: int, device=None) -> Tensor:
    """The normalized 1-D Gaussian ``exp(-t^2 / (2 sigma^2))``, ``t = -radius..radius`` (float32,
    computed in float64), as ``scipy.ndimage`` builds it."""
    t = torch.arange(-radius, radius + 1, dtype=torch.float64, device=device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return (k / k.sum()).float()


def mirror_index(n: int, pad: int, device=None) -> Tensor:
    """Indices ``[n + 2 pad]`` of an axis of length ``n`` extended by reflection about its edge
    pixels (``d c b | a b c d | c b a``: torch's ``reflect``, scipy's ``mirror``), for any
    ``pad`` (a pad longer than the axis keeps reflecting, where ``F.pad`` refuses)."""
    i = torch.arange(-pad, n + pad, device=device)
    if n == 1:
        return torch.zeros_like(i)
    period = 2 * (n - 1)
    i = torch.remainder(i, period)
    return torch.where(i >= n, period - i, i)


def gaussian_blur(maps: Tensor, sigma: float, truncate: float = TRUNCATE) -> Tensor:
    """Separable Gaussian blur of ``[B,H,W]`` maps with reflect padding, on their device.

    Equal to ``scipy.ndimage.gaussian_filter(map, sigma, mode="mirror", truncate=truncate)``
    per map (float32 here). ``sigma`` in pixels; 0 returns the maps unchanged (as float32).
    Not torchvision's ``gaussian_blur``: its reflect padding must be narrower than the map, and
    this one mirrors by index, so any ``sigma`` works on any map (small test maps, coarse
    layers).

    Args:
        maps: ``[B,H,W]`` float tensor.
        sigma: standard deviation in pixels (>= 0).
    Returns:
        float32 ``[B,H,W]``.
    """
    v = maps.float()
    if sigma == 0:
        return v
    radius = int(truncate * float(sigma) + 0.5)
    k = gaussian_kernel1d(float(sigma), radius, v.device)
    H, W = v.shape[-2:]
    v = v[:, None].index_select(2, mirror_index(H, radius, v.device))
    v = F.conv2d(v, k.view(1, 1, -1, 1))
    v = v.index_select(3, mirror_index(W, radius, v.device))
    v = F.conv2d(v, k.view(1, 1, 1, -1))
    return v[:, 0]


class Blur(Explainer):
    """Base of the ``blur:<method>`` explainers; :func:`blurred` makes one per inner method.

    Options: the inner method's (validated by it) plus ``sigma`` (pixels of the input).
    """

    #: the explainer class whose maps are blurred (set on the subclasses :func:`blurred` makes)
    inner_cls: ClassVar[type] = Explainer
    #: the options blur adds to the inner method's
    blur_defaults: ClassVar[Dict[str, Any]] = {"sigma": 8.0}

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)  # names and types of every option, the inner's included
        sigma = self.options["sigma"]
        if not math.isfinite(sigma) or sigma < 0:
            raise ValueError(f"{self.name}: option sigma must be a number >= 0 (pixels); got {sigma!r}")
        try:
            self.inner = self.inner_cls(**{k: v for k, v in options.items() if k not in self.blur_defaults})
        except ValueError as exc:
            raise ValueError(f"{self.name}: {exc}") from None

    def forward_passes(self, model) -> int:
        return self.inner.forward_passes(model)

    def evaluated_backbone(self, model):
        return self.inner.evaluated_backbone(model)

    def check_backbone(self, model) -> None:
        try:
            self.inner.check_backbone(model)
        except ValueError as exc:
            msg, inner = str(exc), self.inner.name
            raise ValueError(f"{self.name}{msg[len(inner):]}" if msg.startswith(inner + ":")
                             else f"{self.name}: {msg}") from None

    def _explain(self, model, x: Tensor, y: Tensor) -> Tensor:
        V = self.inner.explain(model, x, y)
        with torch.no_grad():
            out = minmax(gaussian_blur(V.detach(), self.options["sigma"]))
            # a broken inner map stays as it was, so that the engine flags it (never scored)
            return torch.where(valid_maps(V)[:, None, None], out, V.detach().float())


#: the blur class made for each inner explainer class (the same name gives the same class while
#: the inner name keeps its class; a re-registered inner gets a new one)
_BLURRED: Dict[Tuple[str, type], type] = {}


def blurred(inner: str) -> type:
    """The explainer class ``blur:<inner>`` (the ``blur`` family's maker, called by the registry
    on every lookup). Raises ``UnknownNameError`` for an unknown inner method."""
    try:
        cls = EXPLAINERS.get(inner)
    except UnknownNameError as exc:
        raise UnknownNameError(f"blur:{inner}: {exc}") from None
    if (inner, cls) in _BLURRED:
        return _BLURRED[inner, cls]
    clash = sorted(set(cls.defaults) & set(Blur.blur_defaults))
    if clash:
        raise ValueError(f"blur:{inner}: the method {inner!r} has option(s) {', '.join(clash)} "
                         "of its own, which blur's would hide")
    _BLURRED[inner, cls] = made = type(f"Blur[{inner}]", (Blur,), {
        "__module__": __name__,
        "__doc__": f"``{inner}``'s map, Gaussian-blurred and min-maxed (see :class:`Blur`).",
        "name": f"blur:{inner}",
        "inner_cls": cls,
        "defaults": {**cls.defaults, **Blur.blur_defaults},
        "needs_checkpoint": cls.needs_checkpoint,
        "uses_gradients": cls.uses_gradients,
        "modifies_input": cls.modifies_input,
        "summary": f"control: {inner}'s map Gaussian-blurred (sigma px), min-maxed",
    })
    return made


EXPLAINERS.add_family(
    "blur", blurred, example="gradcam", arg="method",
    summary="control (Song et al. 2023): <method>'s map Gaussian-blurred (sigma=8 px), min-maxed")


# -- model-independent maps ------------------------------------------------------------------------
@register_explainer
class Centre(Explainer):
    """A centred isotropic Gaussian, min-maxed: ``exp(-d^2 / (2 s^2))``, ``d`` the distance of a
    pixel's centre from the image's centre ``((H-1)/2, (W-1)/2)``, ``s = sigma * min(H, W)``."""

    name = "centre"
    summary = "control: a centred Gaussian (sigma=0.25 of the side), the same for every image"
    defaults: dict = {"sigma": 0.25}

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        s = self.options["sigma"]
        if not math.isfinite(s) or s <= 0:
            raise ValueError(f"centre: option sigma must be a number > 0 (a fraction of the side); got {s!r}")

    def forward_passes(self, model) -> int:
        return 0

    def _explain(self, model, x: Tensor, y: Tensor) -> Tensor:
        H, W = x.shape[2], x.shape[3]
        s = self.options["sigma"] * min(H, W)
        i = torch.arange(H, dtype=torch.float64, device=x.device) - (H - 1) / 2
        j = torch.arange(W, dtype=torch.float64, device=x.device) - (W - 1) / 2
        g = torch.exp(-(i[:, None] ** 2 + j[None, :] ** 2) / (2 * s * s))
        return minmax(g[None]).expand(x.shape[0], H, W).clone()


def image_seeds(x: Tensor, seed: int) -> List[int]:
    """One 63-bit seed per image of ``x`` ``[B,...]``: blake2b of ``seed``, the image's shape and
    its float32 values. An image's seed depends on nothing else (not on its batch, its position
    there, nor the device)."""
    flat = x.detach().float().contiguous().cpu().reshape(x.shape[0], -1).numpy()
    head = f"{int(seed)}|{tuple(x.shape[1:])}|".encode()
    return [int.from_bytes(hashlib.blake2b(head + row.tobytes(), digest_size=8).digest(), "little") >> 1
            for row in flat]


@register_explainer
class Random(Explainer):
    """Uniform noise per image, min-maxed; one independent field per image, drawn (on the CPU,
    then moved: the same maps on every device) from a generator seeded with
    :func:`image_seeds` (``seed`` and the image's values)."""

    name = "random"
    summary = "control: uniform noise per image (seeded by seed and the image's values)"
    defaults: dict = {"seed": 0}

    def forward_passes(self, model) -> int:
        return 0

    def _explain(self, model, x: Tensor, y: Tensor) -> Tensor:
        H, W = x.shape[2], x.shape[3]
        g = torch.Generator()
        noise = []
        for s in image_seeds(x, self.options["seed"]):
            g.manual_seed(s)
            noise.append(torch.rand(H, W, generator=g))
        return minmax(torch.stack(noise).to(x.device))
