"""Explainer options are validated in one place (Explainer.__init__): the shared ``amp`` option
gives the same refusal for every explainer that has it."""
import pytest

import camzoo
from camzoo.explainers.base import EXPLAINERS


@pytest.mark.parametrize("name", [n for n in EXPLAINERS.names() if "amp" in EXPLAINERS.get(n).defaults])
def test_every_explainer_refuses_a_bad_amp_alike(name):
    with pytest.raises(ValueError) as e:
        camzoo.get_explainer(name, amp="fp8")
    assert str(e.value) == f"{name}: amp='fp8' is not valid; valid: None (fp32), 'bf16', 'fp16'"
    assert camzoo.get_explainer(name, amp="bf16").options["amp"] == "bf16"
