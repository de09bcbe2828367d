"""Fixtures shared by every test module, and where the tests find the repository and the shared
data (``REPO``, ``SHARED_DATA``, ``SAMPLES``, ``IMAGENETTE``)."""
import os

# the tests never reach the Hugging Face hub (timm's weights): a download that a test did not
# mean to make fails at once instead of waiting on the network (set before timm is imported)
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.path.normpath(os.path.join(REPO, "..", "shared", "data"))
SAMPLES = os.path.join(SHARED_DATA, "imagenet-samples")
IMAGENETTE = os.path.join(SHARED_DATA, "imagenette-224")


@pytest.fixture(scope="session")
def lite0():
    """The embedded pretrained backbone on CPU (built once per test session)."""
    import camzoo

    return camzoo.load_backbone("efficientnet_lite0", device="cpu")


@pytest.fixture
def tiny():
    from camzoo.models.testing import tiny_backbone

    return tiny_backbone()


@pytest.fixture(scope="session")
def sample_batch(lite0):
    """The 6 scikit-image sample photos, preprocessed for Lite0: [6,3,224,224]."""
    from camzoo.data.images import sample_photos

    return torch.stack([lite0.preprocess(im) for _, im in sample_photos()])


#: the insertion / deletion steps of ``tiny_run``
STEPS = 8


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """gradcam + fakecam on the 1000-class tiny backbone (the photos' ImageNet labels are classes
    of it), 6 real images, batches of 4 (one partial)."""
    from camzoo.bench import BenchConfig, run
    from tests.helpers import TINY1000

    out = str(tmp_path_factory.mktemp("bench") / "run")
    r = run(BenchConfig(backbone=TINY1000, weights="random", methods="gradcam,fakecam", data=SAMPLES, limit=6, seed=3,
                        metric_options={"rise": {"steps": STEPS}}, batch_size=4, eval_batch_size=7, out=out, progress=False,
                        grid_images=2), echo=lambda s: None)
    return r


def pytest_configure(config):
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))


def pytest_collection_modifyitems(config, items):
    """Without ``../shared/data`` (a checkout on its own), every test of a module that reads it
    is skipped with the reason, instead of failing on a missing folder."""
    if os.path.isdir(SHARED_DATA):
        return
    import inspect

    skip = pytest.mark.skip(reason=f"needs {SHARED_DATA} (../shared/data beside the repository)")
    reads: dict = {}
    for item in items:
        mod = item.module
        if mod not in reads:
            src = inspect.getsource(mod)
            reads[mod] = any(n in src for n in ("SAMPLES", "IMAGENETTE", "SHARED_DATA", "tiny_run", "lite0_run"))
        if reads[mod]:
            item.add_marker(skip)
