"""LFI-CAM as an explainer: ``lficam`` with ``checkpoint=PATH`` (from ``camzoo train lficam``).

The map is the attention map ``L`` of the LFI-CAM model (see :mod:`camzoo.lficam`), upsampled
bilinearly (``align_corners=False``) to the input size: one forward pass. ``L`` does not
depend on the class asked for (LFI-CAM makes one map per image, for its own decision).

Which classifier the metrics evaluate (:meth:`LFICAMExplainer.evaluated_backbone`):

- a **frozen-mode** checkpoint explains the given frozen backbone itself: the metrics evaluate
  that model (``evaluated_backbone(model) is model``);
- an **end-to-end** checkpoint *is* its own classifier (backbone + FIN + attention, possibly
  with a new classifier): ``evaluated_backbone(model)`` returns the LFI-CAM model wrapped as a
  :class:`camzoo.Backbone` (same preprocessing and normalization; name
  ``lficam[<backbone>]``), and the bench records it per method in ``config.json``
  (``methods.lficam.classifier``: key, name, weights_id).

The checkpoint must match the backbone it is used with: same backbone name and layer, and for
frozen mode the exact same weights (content hash); otherwise it is refused with a message
naming both.
"""
from __future__ import annotations

import os
from typing import Any, Dict, Tuple

import torch
from torch import Tensor

from .base import Explainer, register_explainer

_CACHE: Dict[Tuple[str, float, int, str], Tuple[Any, Dict[str, Any], Any]] = {}


def load_lficam(path: str, model) -> Tuple[Any, Dict[str, Any]]:
    """Rebuild the :class:`camzoo.lficam.LFICAM` of checkpoint ``path`` on backbone ``model``.

    Returns ``(lficam model in eval mode, metadata)``. Cached per (path, mtime, model, device).

    Raises:
        ValueError: not an LFI-CAM checkpoint, a baseline checkpoint, or one trained for
            another backbone / layer / weights.
    """
    from ..lficam import LFICAM, clone_backbone, replace_classifier
    from ..train.loop import load_checkpoint

    path = os.fspath(path)
    mtime = os.path.getmtime(path) if os.path.exists(path) else 0.0
    key = (os.path.abspath(path), mtime, id(model), str(model.device))
    if key in _CACHE:
        lf, meta, ref = _CACHE[key]
        if ref is model:
            return lf, meta
    ck = load_checkpoint(path)
    meta = ck.get("metadata", {})
    if ck.get("task") != "lficam":
        raise ValueError(f"{path} is a {ck.get('task')!r} checkpoint, not LFI-CAM "
                         "(train one with `camzoo train lficam`)")
    mode = meta.get("mode")
    if mode not in ("frozen", "end-to-end"):
        raise ValueError(f"{path} is an LFI-CAM {mode!r} checkpoint (a plain classifier without "
                         "the attention branch); lficam needs a 'frozen' or 'end-to-end' one")
    bad = []
    if meta.get("backbone") != model.name:
        bad.append(f"backbone: checkpoint {meta.get('backbone')!r}, here {model.name!r}")
    if meta.get("layer") not in model.layers:
        bad.append(f"layer: checkpoint {meta.get('layer')!r}, backbone {model.name!r} has "
                   f"{', '.join(model.layers)}")
    if mode == "frozen" and not bad:
        from ..train.lficam import backbone_hash

        h = backbone_hash(model)
        if meta.get("backbone_hash") != h:
            bad.append(f"weights: the FIN was trained on {meta.get('weights_id')!r} (hash "
                       f"{meta.get('backbone_hash')}), here {model.weights_id!r} (hash {h}); a "
                       "frozen-mode FIN only explains the exact model it was trained on")
    if bad:
        raise ValueError(f"lficam: checkpoint {path} was trained for another setup (backbone "
                         f"{meta.get('backbone')!r}, layer {meta.get('layer')!r}, mode {mode!r}) "
                         f"than the one it is used with (backbone {model.name!r}): "
                         + "; ".join(bad))
    depth = int(meta.get("fin_depth", 4))
    if mode == "frozen":
        lf = LFICAM(model, meta["layer"], mode="frozen", depth=depth)
    else:
        bb = clone_backbone(model)
        if meta.get("new_classifier"):
            replace_classifier(bb, int(meta["num_classes"]), class_names=meta.get("class_names"))
        lf = LFICAM(bb, meta["layer"], mode="end-to-end", depth=depth, copy_backbone=False)
    try:
        lf.load_state_dict(ck["state_dict"])
    except RuntimeError as exc:
        raise ValueError(f"lficam: checkpoint {path} does not fit backbone {model.name!r} at "
                         f"layer {meta.get('layer')!r}: {exc}") from None
    lf.eval()
    for p in lf.parameters():
        p.requires_grad_(False)
    lf.to(model.device)
    if mode == "end-to-end":
        from ..backbones import _hash_state_dict
        from ..train.lficam import eval_transform

        wid = f"lficam:{os.path.basename(path)}#{_hash_state_dict(ck['state_dict'])}"
        ev = lf.as_backbone(weights_id=wid)
        size = int(meta.get("image_size") or model.input_size)
        if size != model.input_size:  # evaluate at the resolution it was trained at
            ev.preprocess = eval_transform(model, size)
            ev.input_size = size
        lf.camzoo_backbone = ev  # the classifier the metrics evaluate (one object per load)
    _CACHE[key] = (lf, meta, model)
    return lf, meta


@register_explainer
class LFICAMExplainer(Explainer):
    name = "lficam"
    summary = ("LFI-CAM (Lee et al. 2021): learned Feature Importance Network, map from the "
               "same forward as the prediction; 1 forward")
    needs_checkpoint = True
    defaults = {"checkpoint": None}

    def _model(self, model):
        path = self.options["checkpoint"]
        if not path:
            raise ValueError("lficam needs checkpoint=PATH (CLI: --opt lficam.checkpoint=PATH), "
                             "an LFI-CAM model trained with `camzoo train lficam`")
        return load_lficam(path, model)

    def forward_passes(self, model) -> int:
        return 1

    def mode(self, model) -> str:
        """``"frozen"`` or ``"end-to-end"`` (from the checkpoint's metadata)."""
        return self._model(model)[1]["mode"]

    def evaluated_backbone(self, model):
        """Frozen mode: ``model``. End-to-end: the LFI-CAM model as a Backbone (cached)."""
        lf, meta = self._model(model)
        if meta["mode"] == "frozen":
            return model
        return lf.camzoo_backbone

    def _explain(self, model, x: Tensor, y: Tensor) -> Tensor:
        lf, _ = self._model(model)
        with torch.inference_mode():
            return lf.explain(x)
