"""The tiny test backbone under a ``py:`` name that both the pre-layering code (camzoo.testing)
and the current code (camzoo.models.testing) can import: the old-run fixture was made with it."""


def tiny_backbone(weights=None):
    try:
        from camzoo.models.testing import tiny_backbone as make
    except ImportError:  # the code before the layered package
        from camzoo.testing import tiny_backbone as make
    bb = make()
    # the fixture was stored before random weights were marked: keep its weights id
    bb.weights_id = "module"
    return bb
