"""Token layers of vision transformers as feature maps ``[B,K,h,w]``.

A CNN layer's output is a feature map; a transformer layer's is a set of tokens. The layout of
each explanation layer is a property of the backbone: ``Backbone.reshapes[layer]`` holds a
:class:`TokenLayout` and every camzoo path that reads a layer applies it
(``Backbone.capture_layer``, ``features_and_logits``, ``channels``, pytorch-grad-cam's
``reshape_transform``), so no explainer knows about transformers.

- ViT / DeiT and relatives (timm ``VisionTransformer``): a block's output is ``[B, P + h*w, D]``,
  ``P = model.num_prefix_tokens`` prefix tokens (class, distillation, register tokens) first,
  then the patch tokens in raster order of the patch grid ``(h, w) = model.patch_embed.grid_size``
  (taken from the model, never assumed square or 14x14). :class:`PatchTokens` drops the prefix
  tokens and returns ``[B, D, h, w]``, as pytorch-grad-cam's documented ``reshape_transform``.
- Swin (timm ``SwinTransformer``, ``output_fmt == "NHWC"``): stages, blocks and norms output
  ``[B, H, W, C]``; :class:`ChannelsLast` permutes to ``[B, C, H, W]``.

Both only select and permute elements, so the gradient of the reshaped map is the reshaped
gradient. Both have an inverse (:meth:`TokenLayout.inverse`) that puts a map back into the
layer's layout (prefix tokens from the original output, or zeros): LFI-CAM's ``(1+L)*F``
re-weighting and the heads of token layers use it.

:func:`timm_token_layers` picks the layers of a timm transformer; the default follows
pytorch-grad-cam's advice (``tutorials/vision_transformers.md``): the last block's ``norm1``
(ViT: ``blocks[-1].norm1``; Swin: ``layers[-1].blocks[-1].norm1``) -- the class token of the
last block does not depend on that block's own patch-token outputs, so their gradients vanish.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn


class TokenLayout:
    """Base class: ``layout(output) -> [B,K,h,w]`` and ``layout.inverse(map, like) -> output``."""

    def __call__(self, out: Tensor) -> Tensor:
        raise NotImplementedError

    def inverse(self, fmap: Tensor, like: Optional[Tensor] = None) -> Tensor:
        raise NotImplementedError


class PatchTokens(TokenLayout):
    """ViT-style tokens ``[B, prefix + h*w, D]`` <-> feature map ``[B, D, h, w]``.

    Args:
        grid: the patch grid ``(h, w)`` (``model.patch_embed.grid_size``).
        prefix: leading non-patch tokens (``model.num_prefix_tokens``), dropped by the reshape.
    """

    def __init__(self, grid: Tuple[int, int], prefix: int) -> None:
        self.grid = (int(grid[0]), int(grid[1]))
        self.prefix = int(prefix)

    def __repr__(self) -> str:
        return f"PatchTokens(grid={self.grid}, prefix={self.prefix})"

    def __call__(self, out: Tensor) -> Tensor:
        """``[B, prefix + h*w, D]`` -> ``[B, D, h, w]`` (a view where possible)."""
        h, w = self.grid
        if out.ndim != 3 or out.shape[1] != self.prefix + h * w:
            raise ValueError(
                f"expected tokens [B, {self.prefix} + {h}*{w}, D] (prefix tokens + the model's "
                f"{h}x{w} patch grid); got {tuple(out.shape)}: the input size must be the one "
                "the model was built for")
        B, _, D = out.shape
        return out[:, self.prefix:].reshape(B, h, w, D).permute(0, 3, 1, 2)

    def inverse(self, fmap: Tensor, like: Optional[Tensor] = None) -> Tensor:
        """``[B, D, h, w]`` -> tokens ``[B, prefix + h*w, D]``; the prefix tokens are ``like``'s
        (the original output) or zeros."""
        B, D = fmap.shape[:2]
        tokens = fmap.flatten(2).transpose(1, 2)
        if not self.prefix:
            return tokens
        pre = like[:, :self.prefix] if like is not None else tokens.new_zeros(B, self.prefix, D)
        return torch.cat([pre.to(tokens.dtype), tokens], dim=1)


class ChannelsLast(TokenLayout):
    """Swin-style ``[B, H, W, C]`` <-> ``[B, C, H, W]``."""

    def __repr__(self) -> str:
        return "ChannelsLast()"

    def __call__(self, out: Tensor) -> Tensor:
        if out.ndim != 4:
            raise ValueError(f"expected a channels-last map [B,H,W,C]; got {tuple(out.shape)}")
        return out.permute(0, 3, 1, 2)

    def inverse(self, fmap: Tensor, like: Optional[Tensor] = None) -> Tensor:
        return fmap.permute(0, 2, 3, 1)


TokenParts = Tuple[Dict[str, nn.Module], Dict[str, TokenLayout], Dict[str, Callable[[Tensor], Tensor]], str]


def _vit_parts(model: nn.Module) -> TokenParts:
    grid = tuple(model.patch_embed.grid_size)
    layout = PatchTokens(grid, int(model.num_prefix_tokens))
    n = len(model.blocks)
    layers: Dict[str, nn.Module] = {f"blocks.{i}": model.blocks[i] for i in range(n)}
    default = f"blocks.{n - 1}.norm1"
    layers[default] = model.blocks[n - 1].norm1
    heads: Dict[str, Callable[[Tensor], Tensor]] = {}
    if getattr(model, "global_pool", "token") in ("avg", "max", "avgmax") and hasattr(model, "forward_head"):
        # average/max pooling reads the patch tokens only (the prefix tokens are excluded),
        # so the rest of the network runs from the last block's reshaped output
        last = f"blocks.{n - 1}"
        heads[last] = lambda f: model.forward_head(model.norm(layout.inverse(f)))
    return layers, {k: layout for k in layers}, heads, default


def _nhwc_parts(model: nn.Module, stages: List[str]) -> TokenParts:
    modules = dict(model.named_modules())
    layout = ChannelsLast()
    layers: Dict[str, nn.Module] = {s: modules[s] for s in stages}
    heads: Dict[str, Callable[[Tensor], Tensor]] = {}
    last = modules[stages[-1]]
    default = stages[-1]
    blocks = getattr(last, "blocks", None)
    if blocks is not None and len(blocks) and hasattr(blocks[-1], "norm1"):
        default = f"{stages[-1]}.blocks.{len(blocks) - 1}.norm1"
        layers[default] = blocks[-1].norm1
    norm = getattr(model, "norm", None)
    if isinstance(norm, nn.Module) and hasattr(model, "forward_head"):
        layers["norm"] = norm
        heads["norm"] = lambda f: model.forward_head(layout.inverse(f))
        heads[stages[-1]] = lambda f: model.forward_head(norm(layout.inverse(f)))
    return layers, {k: layout for k in layers}, heads, default


def timm_token_layers(model: nn.Module) -> Optional[TokenParts]:
    """``(layers, reshapes, heads, default_layer)`` of a timm vision transformer, else None.

    - ViT-like (``blocks``, ``patch_embed.grid_size``, ``num_prefix_tokens``): every block
      ``blocks.<i>`` and ``blocks.<last>.norm1`` (default), all :class:`PatchTokens`; a head
      from ``blocks.<last>`` when the model pools the patch tokens (``global_pool="avg"``).
    - channels-last (``output_fmt == "NHWC"``, e.g. Swin): the feature stages
      ``layers.<i>``, ``layers.<last>.blocks.<last>.norm1`` (default) and the final ``norm``,
      all :class:`ChannelsLast`; heads from ``norm`` and from the last stage.
    """
    pe = getattr(model, "patch_embed", None)
    if (hasattr(model, "blocks") and hasattr(model, "num_prefix_tokens") and pe is not None
            and getattr(pe, "grid_size", None) is not None and hasattr(model.blocks[-1], "norm1")):
        return _vit_parts(model)
    if getattr(model, "output_fmt", None) == "NHWC":
        stages = [fi["module"] for fi in getattr(model, "feature_info", [])]
        if stages:
            return _nhwc_parts(model, stages)
    return None


def model_image_size(model: nn.Module) -> Optional[Tuple[int, int]]:
    """The input size a timm transformer was built for (``patch_embed.img_size``), else None."""
    size = getattr(getattr(model, "patch_embed", None), "img_size", None)
    if size is None:
        return None
    return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
