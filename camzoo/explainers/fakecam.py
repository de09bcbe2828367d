"""Fake-CAM (Poppi et al., "Revisiting the evaluation of class activation mapping", 2021).

A map that is 1 everywhere except the top-left pixel, which is 0. It looks at nothing, yet
it (almost) keeps the whole image, so it scores a near-perfect Average Drop / Increase in
Confidence; ADCC exposes it through its Complexity term. It needs no forward pass
(``forward_passes = 0``).
"""
from __future__ import annotations

import torch
from torch import Tensor

from .base import Explainer, register_explainer


@register_explainer
class FakeCAM(Explainer):
    name = "fakecam"
    summary = "Fake-CAM (Poppi et al. 2021): all ones but the top-left pixel; a sanity check"
    defaults: dict = {}

    def forward_passes(self, model) -> int:
        return 0

    def _explain(self, model, x: Tensor, y: Tensor) -> Tensor:
        maps = torch.ones(x.shape[0], x.shape[2], x.shape[3], device=x.device)
        maps[:, 0, 0] = 0.0
        return maps
