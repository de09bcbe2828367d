"""The explain API: the map contract, top-1 as the default target, Fake-CAM, min-max, bad
arguments and maps of the wrong shape refused, no hook left after an error."""
import pytest
import torch

import camzoo
from camzoo.explainers.base import Explainer, minmax
from camzoo.models.backbone import hook_count
from camzoo.models.testing import tiny_backbone
from camzoo.registry import UnknownNameError
from tests.helpers import GRADIENT


def test_maps_contract(lite0, sample_batch):
    x = sample_batch[:2]
    for m in GRADIENT + ["smoothgradcam++", "fakecam"]:
        v = camzoo.explain(m, lite0, x)
        assert v.shape == (2, 224, 224) and v.dtype == torch.float32
        assert torch.isfinite(v).all() and v.min() >= 0 and v.max() <= 1
        assert v.flatten(1).max(1).values.gt(0.9).all(), m  # normalized, informative
    assert hook_count(lite0.model) == 0


def test_default_target_is_top1(lite0, sample_batch):
    x = sample_batch[:2]
    with torch.inference_mode():
        top1 = lite0.model(x).argmax(1)
    torch.testing.assert_close(camzoo.explain("gradcam", lite0, x), camzoo.explain("gradcam", lite0, x, top1))
    other = camzoo.explain("gradcam", lite0, x, torch.tensor([5, 5]))
    assert (other - camzoo.explain("gradcam", lite0, x)).abs().max() > 0.1


def test_fakecam(tiny):
    v = camzoo.explain("fakecam", tiny, torch.randn(3, 3, 32, 32))
    assert v[:, 0, 0].eq(0).all() and v.sum().item() == 3 * (32 * 32 - 1)
    assert camzoo.get_explainer("fakecam").forward_passes(tiny) == 0


def test_minmax_constant_map_is_zero():
    m = torch.stack([torch.full((4, 4), 3.0), torch.arange(16.0).view(4, 4), torch.full((4, 4), float("nan"))])
    out = minmax(m)
    assert out[0].eq(0).all() and out[2].eq(0).all()
    assert out[1].min() == 0 and out[1].max() == 1


def test_bad_arguments(tiny):
    x = torch.randn(1, 3, 32, 32)
    with pytest.raises(ValueError, match=r"out of range.*0\.\.9"):
        camzoo.explain("gradcam", tiny, x, torch.tensor([10]))
    with pytest.raises(UnknownNameError, match="gradcam"):
        camzoo.explain("gradkam", tiny, x)
    with pytest.raises(ValueError, match="has no layer 'nope'; layers: features"):
        camzoo.explain("gradcam", tiny, x, layer="nope")
    with pytest.raises(ValueError, match="no option.*bogus.*layer"):
        camzoo.explain("gradcam", tiny, x, bogus=1)


def test_explain_checks_the_shape_with_a_message_naming_the_method():
    class Wrong(Explainer):
        name = "wrongshape"
        defaults: dict = {}

        def forward_passes(self, model):
            return 0

        def _explain(self, model, x, y):
            return torch.zeros(x.shape[0], 5, 5)

    with pytest.raises(ValueError, match=r"'wrongshape' returned maps of shape \(2, 5, 5\).*expected .*\(2, 32, 32\)"):
        Wrong().explain(tiny_backbone(), torch.zeros(2, 3, 32, 32))


def test_hooks_removed_when_explain_raises(tiny):
    class Boom(Exception):
        pass

    def explode(module, inputs, output):
        raise Boom()

    h = tiny.model.fc.register_forward_hook(explode)
    try:
        for m in GRADIENT + ["smoothgradcam++"]:
            with pytest.raises(Boom):
                camzoo.explain(m, tiny, torch.randn(1, 3, 32, 32), torch.tensor([0]))
    finally:
        h.remove()
    assert hook_count(tiny.model) == 0
