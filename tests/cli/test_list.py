"""``camzoo list`` names the explainers, the backbones and their layers (the default marked)."""
from click.testing import CliRunner

from camzoo.cli import main


def test_list_cli():
    res = CliRunner().invoke(main, ["list"])
    assert res.exit_code == 0
    for word in ("gradcam++", "fakecam", "efficientnet_lite0", "conv_head*", "conv5*, pool5"):
        assert word in res.output
