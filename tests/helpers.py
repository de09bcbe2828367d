"""Backbone factories for tests that name them as ``py:tests.helpers:<function>``."""
from camzoo.models.testing import tiny_backbone


def tiny1000(weights=None):
    """The tiny CNN with 1000 classes (ImageNet labels are valid classes of it)."""
    return tiny_backbone(num_classes=1000)
