"""Context manager capturing one layer's activation (and, optionally, its gradient).

Hooks are removed when the ``with`` block exits, also on error::

    with capture(backbone.layer("conv5"), grad=True) as cap:
        logits = backbone.model(x.requires_grad_())
        logits.gather(1, y[:, None]).sum().backward()
    A, dA = cap.activation, cap.gradient        # [B,K,h,w] each
"""
from __future__ import annotations

from typing import Optional

from torch import Tensor, nn


class capture:  # noqa: N801 - used like a function: ``with capture(layer) as cap``
    """Record the forward output of ``module`` (last call) and its gradient if ``grad``."""

    def __init__(self, module: nn.Module, grad: bool = False, detach: bool = False) -> None:
        self.module = module
        self.grad = grad
        self.detach = detach
        self.activation: Optional[Tensor] = None
        self.gradient: Optional[Tensor] = None
        self._handle = None

    def _hook(self, module: nn.Module, inputs, output: Tensor) -> None:
        self.activation = output.detach() if self.detach else output
        if self.grad and output.requires_grad:
            def _store(g: Tensor) -> None:
                self.gradient = g.detach()

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
