"""Backbone surgery on copies: deep copy with working heads, classifier replacement,
re-initialization (whole model or named blocks) and unfreezing (used by LFI-CAM's end-to-end
mode and its training, and by the model-randomization sanity check)."""
from __future__ import annotations

import copy
import dataclasses
import types
from typing import Any, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from .backbone import Backbone


def _copy_callable(f: Any, memo: dict) -> Any:
    """Deep-copy a head callable so that closures point at the copied modules (via ``memo``)."""
    if isinstance(f, types.FunctionType):
        if id(f) in memo:
            return memo[id(f)]
        if not f.__closure__:
            return f
        cells = []
        for c in f.__closure__:
            try:
                v = c.cell_contents
            except ValueError:  # empty cell
                cells.append(c)
                continue
            cells.append(types.CellType(_copy_callable(v, memo)))
        g = types.FunctionType(f.__code__, f.__globals__, f.__name__, f.__defaults__, tuple(cells))
        g.__kwdefaults__ = f.__kwdefaults__
        memo[id(f)] = g
        return g
    if isinstance(f, (nn.Module, types.MethodType, Tensor)):
        return copy.deepcopy(f, memo)
    return f  # plain data (ints, strings, ...) is shared


def clone_backbone(bb: Backbone) -> Backbone:
    """A deep copy of ``bb`` whose ``layers`` and ``heads`` refer to the copied model.

    ``copy.deepcopy`` alone would leave the head closures (``lambda f: model.fc(...)``)
    pointing at the original model; here they are rebuilt against the copy. The original
    backbone is not modified. The copy keeps ``bb``'s frozen / eval state.
    """
    memo: dict = {}
    model = copy.deepcopy(bb.model, memo)
    layers = {k: copy.deepcopy(m, memo) for k, m in bb.layers.items()}
    heads = {k: _copy_callable(h, memo) for k, h in bb.heads.items()}
    return dataclasses.replace(bb, model=model, layers=layers, heads=heads,
                               mean=bb.mean.clone(), std=bb.std.clone(),
                               class_names=list(bb.class_names))


def _last_linear(model: nn.Module) -> Tuple[nn.Module, str, nn.Linear]:
    found = None
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear):
            found = (name, m)
    if found is None:
        raise ValueError(f"{type(model).__name__} has no nn.Linear classifier to replace")
    name, lin = found
    parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
    return parent, name.rsplit(".", 1)[-1], lin


def replace_classifier(bb: Backbone, num_classes: int, generator: Optional[torch.Generator] = None,
                       class_names: Optional[list] = None) -> Backbone:
    """Replace ``bb``'s final ``nn.Linear`` (in place) by a new ``in -> num_classes`` layer.

    Use on a :func:`clone_backbone` copy. The new layer is initialized like PyTorch's default
    (uniform in ``+-1/sqrt(in)``) from ``generator``; ``bb.num_classes`` and
    ``bb.class_names`` are updated. Heads keep working (they look the layer up by attribute).
    """
    parent, attr, old = _last_linear(bb.model)
    new = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
    bound = 1.0 / old.in_features ** 0.5
    with torch.no_grad():
        new.weight.uniform_(-bound, bound, generator=generator)
        if new.bias is not None:
            new.bias.uniform_(-bound, bound, generator=generator)
    new.to(device=old.weight.device, dtype=old.weight.dtype)
    new.requires_grad_(old.weight.requires_grad)
    if isinstance(parent, nn.Sequential) and attr.isdigit():
        parent[int(attr)] = new
    else:
        setattr(parent, attr, new)
    if hasattr(bb.model, "num_classes"):
        try:
            bb.model.num_classes = num_classes
        except AttributeError:
            pass
    bb.num_classes = int(num_classes)
    bb.class_names = list(class_names) if class_names else [f"class_{i}" for i in range(num_classes)]
    return bb


def reinit_modules(bb: Backbone, names: Sequence[str], seed: int) -> Backbone:
    """Re-initialize, in place, every module below each of ``names`` (dotted paths in
    ``bb.model``; ``""`` is the whole model) with its ``reset_parameters`` (BatchNorm: weight
    1, bias 0 and its running statistics reset). Use on a :func:`clone_backbone` copy.

    PyTorch's initializers draw from the global RNG; the draws happen inside
    ``torch.random.fork_rng`` seeded with ``seed``, so the global RNG state is restored
    afterwards and the result depends on ``seed`` (and ``names``) only.
    """
    mods = [bb.model.get_submodule(n) for n in names]  # unknown names raise, naming them
    devices = [bb.device] if bb.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(int(seed))
        with torch.no_grad():
            for mod in mods:
                for m in mod.modules():
                    if hasattr(m, "reset_parameters") and callable(m.reset_parameters):
                        m.reset_parameters()
    return bb


def reinit_backbone(bb: Backbone, seed: int) -> Backbone:
    """Re-initialize every module of ``bb.model`` (``--init random``): :func:`reinit_modules`
    of the whole model."""
    return reinit_modules(bb, [""], seed)


def _has_params(m: nn.Module) -> bool:
    return any(True for _ in m.parameters())


def randomization_blocks(model: nn.Module) -> List[List[str]]:
    """The blocks of the model-randomization sanity check, from the logits down.

    The rule (one for every family): the top-level children of ``model`` that hold
    parameters, last first; an ``nn.Sequential`` child is split into its own children
    (last first); a normalization layer (BatchNorm, LayerNorm, GroupNorm) joins the block
    of the layer before it in the forward order, so a convolution and its normalization are
    randomized together. Per family this gives:

    - torchvision VGG-16: ``classifier.6``, ``classifier.3``, ``classifier.0``, then every
      convolution of ``features``, ``features.28`` ... ``features.0`` (16 blocks);
    - ResNet / ResNeXt (torchvision and timm): ``fc``, the residual blocks ``layer4.2`` ...
      ``layer1.0``, then ``conv1+bn1``;
    - EfficientNet-Lite0 / timm EfficientNets: ``classifier``, ``conv_head+bn2``, the stages
      ``blocks.6`` ... ``blocks.0``, ``conv_stem+bn1`` (10 blocks);
    - any other timm model: its top-level children (split when sequential);
    - the tiny test model: ``fc``, ``body.2``, ``body.0``.

    Returns:
        a list of blocks, each a list of module paths (``get_submodule`` names).
    """
    norm = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)
    forward_order: List[Tuple[str, nn.Module]] = []
    for name, child in model.named_children():
        if isinstance(child, nn.Sequential):
            forward_order += [(f"{name}.{n}", c) for n, c in child.named_children()]
        else:
            forward_order.append((name, child))
    blocks: List[List[str]] = []
    for name, m in forward_order:
        if not _has_params(m):
            continue
        if isinstance(m, norm) and blocks:
            blocks[-1].append(name)
        else:
            blocks.append([name])
    if not blocks:
        raise ValueError(f"{type(model).__name__} has no parameters to randomize")
    return blocks[::-1]


def set_trainable(bb: Backbone, trainable: bool = True) -> Backbone:
    """Lift (or restore) the frozen flags of ``bb.model``'s parameters. Use on a copy."""
    for p in bb.model.parameters():
        p.requires_grad_(trainable)
    bb.model.train(trainable)
    return bb
