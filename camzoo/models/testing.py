"""Tiny models for tests, examples and CPU smoke runs (no weights needed)."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .backbone import Backbone
from .zoo import backbone_from_module


class TinyCNN(nn.Module):
    """conv(3->8, s2) - ReLU - conv(8->channels, s2) - ReLU [= ``features``] - GAP - linear.

    Input ``[B,3,H,W]`` -> logits ``[B,num_classes]``; ``features`` is ``[B,channels,H/4,W/4]``.
    """

    def __init__(self, num_classes: int = 10, channels: int = 16) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(8, channels, 3, stride=2, padding=1), nn.ReLU(),
        )
        self.fc = nn.Linear(channels, num_classes)

    def head(self, f: Tensor) -> Tensor:
        return self.fc(f.mean(dim=(2, 3)))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


def tiny_backbone(num_classes: int = 10, channels: int = 16, seed: int = 0,
                  model: TinyCNN = None, input_size: int = 32) -> Backbone:
    """A :class:`Backbone` around a (seeded, random unless ``model`` given) :class:`TinyCNN`.

    Its ``weights_id`` is ``"random:seed<seed>"`` unless ``model`` is given (``"module"``): by
    name (``py:camzoo.models.testing:tiny_backbone``) it loads only with ``--weights random``."""
    wid = "module" if model is not None else f"random:seed{seed}"
    if model is None:
        g = torch.Generator().manual_seed(seed)
        model = TinyCNN(num_classes, channels)
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return backbone_from_module(
        model, {"features": model.body}, name="tiny", default_layer="features",
        heads={"features": model.head}, num_classes=num_classes, input_size=input_size,
        weights_id=wid,
    )


def tiny_imagenet_backbone(seed: int = 0) -> Backbone:
    """:func:`tiny_backbone` with ImageNet's 1000 classes, so that labelled ImageNet photos are
    valid classes of it (``py:camzoo.models.testing:tiny_imagenet_backbone --weights random``)."""
    return tiny_backbone(num_classes=1000, seed=seed)


# -- tiny vision transformers (timm's own constructors, random weights) ------------------------
def _tiny_timm(arch: str, name: str, weights, seed: int, **kwargs) -> Backbone:
    """timm ``arch`` with ``kwargs``, initialized from ``seed`` (global RNG untouched), then
    ``weights`` (a state_dict file) loaded if given; wrapped as a Backbone named ``name``."""
    from .zoo import _build_timm

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        bb = _build_timm(arch, "random" if weights is None else weights, **kwargs)
        if weights in (None, "random"):
            # timm's init (std 0.02) makes near-uniform softmax outputs; variance-preserving
            # linear layers (and a wider classifier) keep the probabilities informative
            with torch.no_grad():
                for m in bb.model.modules():
                    if isinstance(m, nn.Linear):
                        m.weight.normal_(0.0, 1.0 / m.in_features ** 0.5)
                heads = bb.model.get_classifier()
                for h in heads if isinstance(heads, tuple) else (heads,):
                    h.weight.mul_(2.0)
    bb.name = name
    return bb


def tiny_vit(weights=None, seed: int = 0, num_classes: int = 10, img_size: int = 32,
             global_pool: str = "token") -> Backbone:
    """A 2-block ViT (timm ``vit_tiny_patch16_224`` constructor: patch 8, embed dim 32, 2 heads)
    at ``img_size`` (32: a 4x4 patch grid + the class token). Layers ``blocks.0``, ``blocks.1``,
    ``blocks.1.norm1`` (default). ``weights``: a state_dict file (CLI ``--weights``)."""
    return _tiny_timm("vit_tiny_patch16_224", "tiny_vit", weights, seed, img_size=img_size,
                      patch_size=8, depth=2, embed_dim=32, num_heads=2, num_classes=num_classes,
                      global_pool=global_pool)


def tiny_deit(weights=None, seed: int = 0, num_classes: int = 10, img_size: int = 32) -> Backbone:
    """A 2-block distilled DeiT (class + distillation token: 2 prefix tokens), patch 8, dim 32."""
    return _tiny_timm("deit_tiny_distilled_patch16_224", "tiny_deit", weights, seed,
                      img_size=img_size, patch_size=8, depth=2, embed_dim=32, num_heads=2,
                      num_classes=num_classes)


def tiny_swin(weights=None, seed: int = 0, num_classes: int = 10, img_size: int = 64) -> Backbone:
    """A 2-stage Swin (timm ``swin_tiny_patch4_window7_224`` constructor: dims 16/32, one block
    per stage, window 4) at ``img_size`` (64: stages at 16x16 and 8x8). Layers ``layers.0``,
    ``layers.1``, ``layers.1.blocks.0.norm1`` (default), ``norm`` (with a head)."""
    return _tiny_timm("swin_tiny_patch4_window7_224", "tiny_swin", weights, seed,
                      img_size=img_size, embed_dim=16, depths=(1, 1), num_heads=(1, 2),
                      window_size=4, num_classes=num_classes)
