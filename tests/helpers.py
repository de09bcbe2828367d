"""Backbone factories for tests that name them as ``py:tests.helpers:<function>``."""
from camzoo.models.testing import tiny_backbone


def tiny1000(weights=None):
    """The tiny CNN with 1000 classes (ImageNet labels are valid classes of it): random unless
    ``weights`` names a state_dict file."""
    bb = tiny_backbone(num_classes=1000)
    if weights not in (None, "random"):
        from camzoo.models.backbone import load_state_dict_file

        bb.model.load_state_dict(load_state_dict_file(weights))
        bb.weights_id = "file"
    return bb


def slow_rank1_tiny(weights=None):
    """The tiny CNN (same weights as ``tiny_backbone()``) whose forward sleeps 0.3 s in the
    process whose torchrun ``RANK`` is 1: that rank is still working when the others are done
    (tests kill it there). The numbers are those of the tiny CNN."""
    import os
    import time

    from camzoo.models.testing import TinyCNN

    class SlowTinyCNN(TinyCNN):
        def forward(self, x):
            time.sleep(0.3)
            return super().forward(x)

    bb = tiny_backbone()
    if os.environ.get("RANK") != "1":
        return bb
    model = SlowTinyCNN()
    model.load_state_dict(bb.model.state_dict())
    slow = tiny_backbone(model=model)
    slow.weights_id = bb.weights_id  # the same (random) weights as the other ranks'
    return slow
