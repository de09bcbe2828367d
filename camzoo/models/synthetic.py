"""A synthetic known-answer task for testing learned (and other) explainers.

Each image is grey noise with one coloured object (a square or a disc) at a random place; the
object's colour defines the class. The ground-truth evidence is therefore known exactly: the
object's mask. Optionally a *distractor* object of a colour that belongs to no class is drawn
too, so that "point at any salient blob" is not enough to pass.

- :func:`make_shapes` generates ``(x01, y, mask)`` deterministically from a seed.
- :func:`train_tiny_classifier` trains a :class:`camzoo.models.testing.TinyCNN` on it (a few seconds
  on CPU) and returns it as a frozen :class:`camzoo.Backbone` (layer ``"features"``, 8x8 for
  32x32 inputs, head supported).
- :func:`peak_in_mask` / :func:`peak_in_object_rate`: does a map's maximum lie inside the object?

Example::

    from camzoo.models.synthetic import make_shapes, train_tiny_classifier, peak_in_object_rate
    bb = train_tiny_classifier(seed=0)
    x01, y, mask = make_shapes(256, seed=123)
    maps = camzoo.explain("gradcam", bb, bb.normalize(x01), y)
    print(peak_in_object_rate(maps, mask))
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .backbone import Backbone

#: class colours (RGB in [0,1]); class i has colour CLASS_COLOURS[i]
CLASS_COLOURS = (
    (0.95, 0.10, 0.10),  # red
    (0.10, 0.85, 0.10),  # green
    (0.15, 0.25, 0.95),  # blue
    (0.95, 0.90, 0.10),  # yellow
    (0.95, 0.10, 0.95),  # magenta
    (0.10, 0.90, 0.90),  # cyan
)
#: distractor colour (belongs to no class): orange-brown
DISTRACTOR_COLOUR = (0.70, 0.45, 0.20)


def make_shapes(
    n: int,
    *,
    num_classes: int = 4,
    size: int = 32,
    obj_size: Tuple[int, int] = (8, 12),
    shape: str = "square",
    distractor: bool = False,
    noise: float = 0.25,
    seed: int = 0,
    device: Optional[torch.device] = None,
) -> Tuple[Tensor, Tensor, Tensor]:
    """Generate ``n`` images of one class-coloured object on grey noise.

    Args:
        n: number of images.
        num_classes: 2..6; class ``i`` is an object of colour ``CLASS_COLOURS[i]``.
        size: image side in pixels.
        obj_size: inclusive range of the object's side (square) or diameter (disc), pixels.
        shape: ``"square"``, ``"disc"`` or ``"mixed"`` (random per image; shape is not the class).
        distractor: also draw an object of :data:`DISTRACTOR_COLOUR` that does not overlap
            the class object (it is *not* part of the mask); an image with no room for
            it gets none.
        noise: standard deviation of the grey background noise around 0.5.
        seed: everything is drawn from ``torch.Generator().manual_seed(seed)``.
        device: where the returned tensors live (generation runs on CPU).
    Returns:
        ``x01`` float32 ``[n,3,size,size]`` in [0,1]; ``y`` LongTensor ``[n]`` in
        ``[0,num_classes)``; ``mask`` bool ``[n,size,size]``, True on the class object.
    """
    _check_shape_args(num_classes, size, obj_size, shape)
    lo, hi = obj_size
    g = torch.Generator().manual_seed(int(seed))
    y = torch.randint(0, num_classes, (n,), generator=g)
    grey = (0.5 + noise * torch.randn(n, 1, size, size, generator=g)).clamp(0, 1)
    x01 = grey.expand(n, 3, size, size).clone()
    colours = torch.tensor(CLASS_COLOURS[:num_classes])[y]  # [n,3]

    side = torch.randint(lo, hi + 1, (n,), generator=g)
    mask = _draw_objects(g, side, size, shape, None)
    x01 = torch.where(mask[:, None], colours.view(n, 3, 1, 1), x01)
    if distractor:
        dmask = _draw_objects(g, torch.randint(lo, hi + 1, (n,), generator=g), size, shape, mask)
        dcol = torch.tensor(DISTRACTOR_COLOUR).view(1, 3, 1, 1)
        x01 = torch.where(dmask[:, None], dcol, x01)
    return x01.to(device), y.to(device), mask.to(device)


def _check_shape_args(num_classes: int, size: int, obj_size: Tuple[int, int], shape: str) -> None:
    """Raise ``ValueError`` for arguments :func:`make_shapes` cannot draw."""
    if not 2 <= num_classes <= len(CLASS_COLOURS):
        raise ValueError(f"num_classes must be in 2..{len(CLASS_COLOURS)}; got {num_classes}")
    if shape not in ("square", "disc", "mixed"):
        raise ValueError(f"shape must be 'square', 'disc' or 'mixed'; got {shape!r}")
    lo, hi = obj_size
    if not 1 <= lo <= hi <= size // 2:
        raise ValueError(f"obj_size must satisfy 1 <= lo <= hi <= size/2; got {obj_size}")


def _draw_objects(g: torch.Generator, side: Tensor, size: int, shape: str,
                  avoid: Optional[Tensor]) -> Tensor:
    """Random object masks [n,size,size] of sides ``side`` [n] (``shape`` as in
    :func:`make_shapes`), drawn from ``g``; with ``avoid`` [n,size,size] the object's bounding
    box keeps 2 px away from it, and an image with no room for it gets none."""
    n = len(side)
    disc = (torch.rand(n, generator=g) < 0.5) if shape == "mixed" else \
        torch.full((n,), shape == "disc")
    u = torch.rand(n, size, size, generator=g)  # random score per top-left position
    top, left, free = _place(u, side, avoid)
    return _object_masks(side, top, left, disc, size) & free.view(n, 1, 1)


def _place(u: Tensor, side: Tensor, avoid: Optional[Tensor]) -> Tuple[Tensor, Tensor, Tensor]:
    """Top-left corners of objects of sides ``side`` [n]: the position of highest score ``u``
    [n,size,size] among the free ones (vectorized per side length); ``free`` [n] is False
    where ``avoid`` left no room."""
    n, size = u.shape[0], u.shape[1]
    top = torch.empty(n)
    left = torch.empty(n)
    free = torch.ones(n, dtype=torch.bool)
    for s_ in side.unique().tolist():
        sel = side == s_
        span = size - s_ + 1  # valid top/left positions per axis
        score = u[sel][:, :span, :span]
        if avoid is not None:
            grown = F.max_pool2d(avoid[sel][:, None].float(), 5, 1, 2)
            blocked = F.max_pool2d(grown, s_, 1)[:, 0] > 0  # [k,span,span]
            score = torch.where(blocked, torch.full_like(score, -1.0), score)
        best = score.flatten(1).argmax(1)
        top[sel] = (best // span).float()
        left[sel] = (best % span).float()
        free[sel] = score.flatten(1).max(1).values >= 0
    return top, left, free


def _object_masks(side: Tensor, top: Tensor, left: Tensor, disc: Tensor, size: int) -> Tensor:
    """Masks [n,size,size] of squares (or discs where ``disc``) of sides ``side`` at
    ``top`` / ``left``."""
    n = len(side)
    ii = torch.arange(size).view(1, size, 1).float()
    jj = torch.arange(size).view(1, 1, size).float()
    s = side.float().view(n, 1, 1)
    t, l_ = top.view(n, 1, 1), left.view(n, 1, 1)
    sq = (ii >= t) & (ii < t + s) & (jj >= l_) & (jj < l_ + s)
    r = s / 2
    dc = ((ii + 0.5 - t - r) ** 2 + (jj + 0.5 - l_ - r) ** 2) <= r ** 2
    return torch.where(disc.view(n, 1, 1), dc, sq)


class ShapesDataset(torch.utils.data.Dataset):
    """``(x, y)`` pairs of :func:`make_shapes` images, normalized for ``backbone``.

    Also keeps ``mask`` ``[n,H,W]`` (bool) and ``x01``. ``manifest()`` identifies the data
    (generation parameters) for training checkpoints.
    """

    def __init__(self, n: int, backbone: Backbone, **kwargs) -> None:
        self.params = {"n": n, **kwargs}
        self.x01, self.y, self.mask = make_shapes(n, **kwargs)
        self.x = backbone.normalize(self.x01.to(backbone.mean.device)).cpu()

    def __len__(self) -> int:
        return self.x.shape[0]

    def __getitem__(self, i: int) -> Tuple[Tensor, Tensor]:
        return self.x[i], self.y[i]

    def manifest(self) -> list:
        return [f"synthetic-shapes:{sorted(self.params.items())}"]


def train_tiny_classifier(
    *,
    num_classes: int = 4,
    n_train: int = 1024,
    steps: int = 150,
    batch_size: int = 64,
    lr: float = 3e-3,
    channels: int = 16,
    seed: int = 0,
    distractor: bool = False,
    shape: str = "square",
    size: int = 32,
    dim_augment: bool = True,
) -> Backbone:
    """Train a :class:`camzoo.models.testing.TinyCNN` on :func:`make_shapes` images (seconds on CPU).

    Adam on cross-entropy, data seed ``seed``, init and batch order from a generator seeded
    with ``seed`` too. ``dim_augment``: train on randomly darkened images and darkened
    backgrounds (``x01 * factor``), so that the classifier's evidence is the object and
    survives the multiplicative masks that L-CAM-Img and the AD/IC metrics apply.
    Returns a frozen Backbone named ``"tiny-shapes"`` (eval mode, mean = std = 0.5, layer
    ``"features"`` ``[B,channels,size/4,size/4]``, head supported) with attribute
    ``train_accuracy`` (float, on its last 512 training images, undarkened).
    """
    from .testing import TinyCNN, tiny_backbone

    g = torch.Generator().manual_seed(int(seed))
    model = TinyCNN(num_classes, channels)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_uniform_(m.weight, a=5 ** 0.5, generator=g)
                nn.init.zeros_(m.bias)
    x01, y, mask = make_shapes(n_train, num_classes=num_classes, seed=seed + 7919,
                               distractor=distractor, shape=shape, size=size)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    with torch.enable_grad():
        for _ in range(steps):
            idx = torch.randint(0, n_train, (batch_size,), generator=g)
            xb = x01[idx]
            if dim_augment:
                # scale the image by a random factor in [0.2, 1] and, for half the batch, the
                # background by another in [0.2, 1]: the class then depends on the object
                # only, as for a real classifier whose evidence survives masking
                k = xb.shape[0]
                xb = xb * (0.2 + 0.8 * torch.rand(k, 1, 1, 1, generator=g))
                dim = 0.8 * torch.rand(k, 1, 1, 1, generator=g) * \
                    (torch.rand(k, 1, 1, 1, generator=g) < 0.5)
                xb = xb * (1 - dim * (~mask[idx][:, None]).float())
            loss = F.cross_entropy(model((xb - 0.5) / 0.5), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    bb = tiny_backbone(num_classes=num_classes, channels=channels, model=model, input_size=size)
    with torch.inference_mode():
        acc = (bb.model((x01[-512:] - 0.5) / 0.5).argmax(1) == y[-512:]).float().mean()
    bb.train_accuracy = float(acc)  # type: ignore[attr-defined]
    bb.name = "tiny-shapes"
    return bb


def peak_in_mask(maps: Tensor, mask: Tensor) -> Tensor:
    """Whether each map's maximum lies inside its mask.

    Args:
        maps: float ``[B,H,W]`` (any range); ties resolve to the first maximum in row-major
            order, so a constant map counts as pointing at pixel (0,0).
        mask: bool ``[B,H,W]``, True on the object.
    Returns:
        bool ``[B]``.
    """
    if maps.shape != mask.shape:
        raise ValueError(f"maps {tuple(maps.shape)} and mask {tuple(mask.shape)} differ in shape")
    idx = maps.flatten(1).argmax(1, keepdim=True)
    return mask.flatten(1).gather(1, idx)[:, 0].bool()


def peak_in_object_rate(maps: Tensor, mask: Tensor) -> float:
    """Fraction of images whose map peak lies inside the object (see :func:`peak_in_mask`)."""
    return float(peak_in_mask(maps, mask).float().mean())
