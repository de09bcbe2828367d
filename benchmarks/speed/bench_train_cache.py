"""Training speed on the embedded Lite0: the feature cache vs the uncached loop, and L-CAM-Img images/s.

1. **Cache speed-up** (L-CAM-Fm, and LFI-CAM frozen mode): the same training images, the
   same views (center crop + flip: epoch e trains on view e % 2), the same epochs, batch and
   seed, once through the uncached loop (every step decodes, preprocesses and runs the
   classifier: ``camzoo.train.cache.FixedViews``) and once from the cache. Printed: the time
   to build the cache (one forward per view), the training time of each, the speed-up with
   and without the build, and the largest difference of the per-epoch mean losses (float16
   rounding of the stored features).
2. **L-CAM-Img images/s** (the masked forward + backward runs through all of Lite0): the
   uncached loop (random crops, the clean forward every step) with DataLoader workers 0 and 1,
   with the masked input contiguous (NCHW) or channels-last, and the cached loop (the clean
   forward read from the cache; the image is still decoded). bf16 autocast is CUDA-only
   (``amp="auto"``) and not measured on a CPU.

Wall and process-CPU seconds are printed for every run (the machine is shared: wall time
measures the neighbours too). Nothing is evaluated (``val_set=None``) and no checkpoint is
written, so only the training loop is timed.

    python -m benchmarks.speed.bench_train_cache                 # 256 images, 3 epochs
    python -m benchmarks.speed.bench_train_cache --images 512 --epochs 4 --skip-lficam

(from the repository root).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile

import torch

import camzoo
import camzoo.explainers.learned.lcam as lcam_mod
from benchmarks._common import (IMAGENETTE, Clock, add_threads, command, load_average, machine, parser, quiet,
                                set_threads)
from camzoo.train.cache import FixedViews, cached_training_set
from camzoo.train.data import training_data
from camzoo.train.lcam import train_lcam
from camzoo.train.lficam import lficam_data, train_lficam

QUIET = dict(progress=False, log=quiet)


def epoch_losses(res) -> list:
    return [h["train"]["loss"] for h in res["history"]]


@contextlib.contextmanager
def masked_input_format(fmt):
    """Run L-CAM-Img's masked forward with its input in ``fmt`` (None: camzoo's own, channels-last)."""
    orig = lcam_mod.masked_logits

    def patched(bb, variant, layer, x, A, S):
        if variant != "img" or fmt is None:
            return orig(bb, variant, layer, x, A, S)
        M = lcam_mod.upsample(S, tuple(x.shape[-2:]))
        xin = bb.normalize(bb.denormalize(x) * M[:, None].to(x.dtype)).contiguous(memory_format=fmt)
        return bb.model(xin)

    lcam_mod.masked_logits = patched
    import camzoo.train.lcam as tl
    tl.masked_logits = patched
    try:
        yield
    finally:
        lcam_mod.masked_logits = orig
        tl.masked_logits = orig


def main() -> None:
    ap = parser(__doc__, full=True)
    ap.add_argument("--data", default=IMAGENETTE)
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--img-images", type=int, default=96, help="images per L-CAM-Img timing run")
    ap.add_argument("--lficam-layer", default="conv_head")
    ap.add_argument("--skip-lficam", action="store_true")
    ap.add_argument("--skip-img", action="store_true")
    add_threads(ap)
    ap.add_argument("--workdir", default=None, help="cache folder (default: a temporary one)")
    a = ap.parse_args()
    set_threads(a.threads)
    work = a.workdir or tempfile.mkdtemp(prefix="camzoo-cache-bench-")
    bb = camzoo.load_backbone("efficientnet_lite0", device="cpu")
    print(f"# bench_train_cache ({machine()})")
    print(f"command: {command()}")
    print(f"load average at start: {load_average()}")
    tr, _ = training_data(a.data, bb, val_fraction=0.0, limit=a.images, seed=0)
    E, B = a.epochs, a.batch_size
    kw = dict(epochs=E, batch_size=B, seed=0, **QUIET)

    print(f"\n## 1. L-CAM-Fm: {len(tr)} images x {E} epochs, batch {B}, views center+flip")
    with Clock() as t_un:
        r_un = train_lcam(bb, FixedViews(tr, "center+flip"), None, variant="fm", lr=0.01, **kw)
    root = os.path.join(work, "cache")
    shutil.rmtree(root, ignore_errors=True)
    with Clock() as t_b:
        cached = cached_training_set(tr, bb, "conv_head", root, views="center+flip", batch_size=B, **QUIET)
    with Clock() as t_c:
        r_c = train_lcam(bb, cached.base, None, variant="fm", lr=0.01, cache=root, **kw)
    diff = max(abs(x - y) for x, y in zip(epoch_losses(r_un), epoch_losses(r_c)))
    print("| run | wall s | CPU s |")
    print("|---|---|---|")
    print(f"| uncached loop ({E} epochs) | {t_un.wall:.1f} | {t_un.cpu:.1f} |")
    print(f"| cache build ({2 * len(tr)} views, once) | {t_b.wall:.1f} | {t_b.cpu:.1f} |")
    print(f"| cached loop ({E} epochs) | {t_c.wall:.1f} | {t_c.cpu:.1f} |")
    print(f"\nspeed-up of the epochs: {t_un.wall / t_c.wall:.1f}x wall, {t_un.cpu / t_c.cpu:.1f}x CPU; "
          f"including the build: {t_un.wall / (t_b.wall + t_c.wall):.2f}x wall, "
          f"{t_un.cpu / (t_b.cpu + t_c.cpu):.2f}x CPU; "
          f"per-epoch mean loss, largest |cached - uncached| = {diff:.2e}")

    if not a.skip_lficam:
        ltr, _, _ = lficam_data(a.data, bb, val_fraction=0.0, limit=a.images, seed=0)
        lkw = dict(mode="frozen", layer=a.lficam_layer, lr=0.01, **kw)
        print(f"\n## 1b. LFI-CAM frozen mode at {a.lficam_layer}: {len(ltr)} images x {E} epochs, batch {B}")
        with Clock() as l_un:
            q_un = train_lficam(bb, FixedViews(ltr, "center+flip"), None, **lkw)
        lroot = os.path.join(work, "cache-lficam")
        shutil.rmtree(lroot, ignore_errors=True)
        with Clock() as l_b:
            cached_training_set(ltr, bb, a.lficam_layer, lroot, views="center+flip", batch_size=B, **QUIET)
        with Clock() as l_c:
            q_c = train_lficam(bb, ltr, None, cache=lroot, **lkw)
        diff = max(abs(x - y) for x, y in zip(epoch_losses(q_un), epoch_losses(q_c)))
        print("| run | wall s | CPU s |")
        print("|---|---|---|")
        print(f"| uncached loop | {l_un.wall:.1f} | {l_un.cpu:.1f} |")
        print(f"| cache build | {l_b.wall:.1f} | {l_b.cpu:.1f} |")
        print(f"| cached loop | {l_c.wall:.1f} | {l_c.cpu:.1f} |")
        print(f"\nspeed-up of the epochs: {l_un.wall / l_c.wall:.2f}x wall, {l_un.cpu / l_c.cpu:.2f}x CPU; "
              f"including the build: {l_un.wall / (l_b.wall + l_c.wall):.2f}x wall; "
              f"largest per-epoch loss difference {diff:.2e}")

    if not a.skip_img:
        itr, _ = training_data(a.data, bb, val_fraction=0.0, limit=a.img_images, seed=0)
        ikw = dict(epochs=1, batch_size=B, seed=0, variant="img", lr=0.01, **QUIET)
        iroot = os.path.join(work, "cache-img")
        shutil.rmtree(iroot, ignore_errors=True)
        cached_training_set(itr, bb, "conv_head", iroot, views="center+flip", batch_size=B, **QUIET)
        n = len(itr)
        print(f"\n## 2. L-CAM-Img training throughput: {n} images, 1 epoch, batch {B}")
        print("| configuration | images/s (wall) | images/s (CPU-s) |")
        print("|---|---|---|")
        runs = [
            ("uncached, random crops, workers 0, masked input contiguous (NCHW)", dict(), torch.contiguous_format),
            ("uncached, workers 0, masked input channels-last (the default)", dict(), None),
            ("uncached, workers 1", dict(num_workers=1), None),
            ("cached clean features (center+flip), workers 0", dict(cache=iroot), None),
            ("cached clean features, workers 1", dict(cache=iroot, num_workers=1), None),
        ]
        for name, extra, fmt in runs:
            with masked_input_format(fmt), Clock() as t:
                train_lcam(bb, itr, None, **{**ikw, **extra})
            print(f"| {name} | {n / t.wall:.2f} | {n / t.cpu:.2f} |")
    if a.workdir is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
