"""camzoo ``scorecam --variant grad-cam`` versus pytorch-grad-cam's ``ScoreCAM``.

Same backbone, layer, images and target classes for both; prints, measured in one run:

- time ratio (theirs / ours), wall clock and process CPU time, each side at its best batch size;
- peak-memory ratio (ours / theirs);
- max |minmax(ours) - theirs| over the maps (pytorch-grad-cam upsamples then min-maxes, twice;
  camzoo min-maxes at feature resolution then upsamples, so ``minmax(ours)`` is its output).

Usage::

    python -m benchmarks.speed.bench_scorecam                 # resnet18, random weights, 2 photos
    python -m benchmarks.speed.bench_scorecam --backbone efficientnet_lite0 --batch-sizes 32
    python -m benchmarks.speed.bench_scorecam --same-object                 # one process, one nn.Module
    python -m benchmarks.speed.bench_scorecam --same-object --backbone resnet50 --device cuda --amp bf16

(from the repository root; each worker subprocess runs this module the same way).

``--same-object``: both sides get the *identical* ``nn.Module`` (one ``load_backbone`` in one
process; ``--layout channels_last`` (default) or ``contiguous`` converts it for both). Each side
is called once untimed, then ``--reps`` timed calls alternate (CUDA synchronized). camzoo runs
twice: with ``fuse_bn=False`` (its masked forwards through that very module) and with its
default ``fuse_bn=True`` (a BatchNorm-folded copy built from it); with ``--amp`` camzoo runs its
forwards under autocast (pytorch-grad-cam has no such option: it runs in fp32, as a user gets
it). Peak device memory is reported on CUDA (``torch.cuda.max_memory_allocated``). On CPU both
sides are at the forward-pass limit; the GPU target (bf16, ResNet-50) is >= 5x.

How it measures
---------------
Every (method, batch size) runs in a *fresh Python subprocess*, so neither side inherits the
other's allocations, caches or allocator state. Inside the subprocess the backbone and the
inputs are loaded and one warm-up forward at the run's batch size is made (one-time oneDNN and
allocator set-up is not charged to either side); then the kernel's peak-RSS counter is reset
(``echo 5 > /proc/self/clear_refs`` resets ``VmHWM`` to the current RSS), the current RSS is
read as the baseline, the explainer runs once, and ``VmHWM - baseline`` is reported: the peak
resident memory the call added on top of the loaded model and inputs. Where clear_refs is not
writable the script falls back to ``ru_maxrss - baseline RSS`` and says so (that can understate
a call whose peak stays below an earlier set-up peak). Wall time (``perf_counter``) and process
CPU time (user + sys, ``getrusage``) are taken around the same call; on a shared, loaded machine
the CPU time is the steadier of the two.

pytorch-grad-cam gets a plain (non-channels-last) copy of the model, as a user would pass it,
and its ``batch_size`` attribute set; camzoo gets the Backbone as ``load_backbone`` builds it
(channels-last). Each side's batch sizes from ``--batch-sizes`` are tried and each is reported at
its fastest (by CPU time, or wall time with ``--rank-by wall``). Both sides make the same number
of forward passes (K + 1 per image); camzoo's speed comes from channels-last convolutions and no
per-sample ``.item()``/numpy round-trips, its memory from streaming the masked inputs in chunks
instead of materializing ``[B,K,3,H,W]``.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile

import torch

from benchmarks._common import (REPO, Clock, add_amp, add_threads, int_list, load_average, load_seeded,
                                machine, parser, set_threads)


# -- memory / time probes --------------------------------------------------------------------
def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def pytorch_grad_cam_scorecam(model, layer, x, y, bs: int) -> torch.Tensor:
    """pytorch-grad-cam's ``ScoreCAM`` maps of ``x`` for classes ``y``, ``bs`` masked images a batch."""
    from pytorch_grad_cam import ScoreCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    cam = ScoreCAM(model, [layer])
    cam.batch_size = bs
    try:
        return torch.from_numpy(cam(x, [ClassifierOutputTarget(int(c)) for c in y]))
    finally:
        cam.activations_and_grads.release()


# -- worker: one method, one batch size, in its own process ----------------------------------
def worker(side: str, bs: int, workdir: str) -> None:
    import gc

    import camzoo

    cfg = json.load(open(os.path.join(workdir, "config.json")))
    set_threads(cfg["threads"])
    bb = camzoo.load_backbone(cfg["backbone"], weights=cfg["weights"], device="cpu",
                              channels_last=(side == "ours"))
    x, y = torch.load(os.path.join(workdir, "inputs.pt"))
    layer = bb.layer(cfg["layer"])
    with torch.inference_mode():  # warm-up forward at the run's batch size
        xw = x[:1].expand(bs, -1, -1, -1).contiguous()
        if side == "ours":
            xw = xw.contiguous(memory_format=torch.channels_last)
        bb.model(xw)
        del xw
    gc.collect()
    exact = _reset_peak()
    base = _status_kib("VmRSS")
    ru0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with Clock() as t:  # wall: perf_counter; CPU: process_time (user + sys)
        if side == "ours":
            maps = camzoo.explain("scorecam", bb, x, y, layer=cfg["layer"], variant="grad-cam", batch_size=bs)
        else:
            maps = pytorch_grad_cam_scorecam(bb.model, layer, x, y, bs)
    wall, cpu = t.wall, t.cpu
    peak = _status_kib("VmHWM") if exact else max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, ru0)
    torch.save(maps.float(), os.path.join(workdir, f"map_{side}_{bs}.pt"))
    print(json.dumps({"side": side, "bs": bs, "wall_s": wall, "cpu_s": cpu,
                      "peak_mib": (peak - base) / 1024.0, "exact_peak": exact}))


def _run_worker(side: str, bs: int, workdir: str) -> dict:
    env = dict(os.environ, TQDM_DISABLE="1")
    p = subprocess.run([sys.executable, "-m", __spec__.name, "--worker", side, "--bs", str(bs),
                        "--workdir", workdir], cwd=REPO, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        raise RuntimeError(f"worker {side} bs={bs} failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


# -- same model object, one process ----------------------------------------------------------
def same_object(a) -> None:
    os.environ.setdefault("TQDM_DISABLE", "1")  # pytorch-grad-cam's per-image progress bars
    import camzoo
    from camzoo.data.images import sample_photos
    from camzoo.explainers.base import minmax
    from camzoo.utils import resolve_device

    set_threads(a.threads)
    device = resolve_device(a.device)
    bb, weights = load_seeded(a.backbone, device)  # py: tiny models: seeded random
    if a.layout == "contiguous":
        bb.model.to(memory_format=torch.contiguous_format)
    model = bb.model  # the one object both sides get
    layer_name = a.layer or bb.default_layer
    layer = bb.layer(layer_name)
    photos = (sample_photos() * 4)[: a.images]
    x = torch.stack([bb.preprocess(im) for _, im in photos]).to(device)
    with torch.inference_mode():
        y = model(x).argmax(1)
    bs = int_list(a.batch_sizes)[-1]
    K = bb.channels(layer_name)

    def theirs():
        return pytorch_grad_cam_scorecam(model, layer, x, y, bs)

    def ours(fuse_bn, amp):
        return lambda: camzoo.explain("scorecam", bb, x, y, layer=layer_name, variant="grad-cam",
                                      batch_size=bs, fuse_bn=fuse_bn, amp=amp).cpu()

    sides = {"pytorch-grad-cam ScoreCAM (fp32)": theirs,
             "camzoo grad-cam, fuse_bn=False, fp32": ours(False, None),
             "camzoo grad-cam, fuse_bn=True, fp32": ours(True, None)}
    if a.amp:
        sides[f"camzoo grad-cam, fuse_bn=False, {a.amp}"] = ours(False, a.amp)
        sides[f"camzoo grad-cam, fuse_bn=True, {a.amp}"] = ours(True, a.amp)
    maps, times, peaks = {}, {k: [] for k in sides}, {}
    for k, f in sides.items():  # untimed first call: kernels, cuDNN plans, the folded copy
        maps[k] = f()
    for _ in range(a.reps):
        for k, f in sides.items():
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            with Clock(device) as t:
                f()
            times[k].append(t.wall)
            if device.type == "cuda":
                peaks[k] = torch.cuda.max_memory_allocated(device) / 2 ** 20
    print(f"same nn.Module for both sides: {a.backbone} ({'random' if weights else 'embedded'} weights), "
          f"layout {a.layout}, layer {layer_name} (K={K}), {a.images} images, batch {bs}, {K + 1} "
          f"forwards per image; best of {a.reps}")
    print(f"machine: {machine(device)}")
    ref_name = "pytorch-grad-cam ScoreCAM (fp32)"
    t_ref = min(times[ref_name])
    print(f"{'side':<40}{'s/img':>10}{'theirs/ours':>13}{'max map diff':>14}" + ("   peak MiB" if peaks else ""))
    for k in sides:
        t = min(times[k])
        diff = 0.0 if k == ref_name else float((minmax(maps[k]) - maps[ref_name]).abs().max())
        print(f"{k:<40}{t / a.images:>10.4f}{t_ref / t:>12.2f}x{diff:>14.2e}"
              + (f"{peaks[k]:>11.0f}" if peaks else ""))


# -- main ------------------------------------------------------------------------------------
def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--backbone", default="resnet18",
                    help="resnet18 (random weights, saved to a temp file; any torchvision name works) "
                         "or efficientnet_lite0 (embedded weights)")
    ap.add_argument("--layer", default=None, help="explanation layer (default: the backbone's default)")
    ap.add_argument("--images", type=int, default=2, help="number of sample photos (max 6)")
    ap.add_argument("--batch-sizes", default="16,32", help="batch sizes tried for each side (comma-separated)")
    add_threads(ap, help="torch threads per worker (0 = torch default)")
    ap.add_argument("--rank-by", choices=("cpu", "wall"), default="cpu",
                    help="pick each side's best batch size by CPU time or wall time")
    ap.add_argument("--same-object", action="store_true",
                    help="one process, the identical nn.Module for both sides (see the docstring)")
    ap.add_argument("--device", default="cpu", help="--same-object: cpu or cuda")
    add_amp(ap, help="--same-object: camzoo's autocast")
    ap.add_argument("--layout", default="channels_last", choices=("channels_last", "contiguous"),
                    help="--same-object: the shared module's memory format")
    ap.add_argument("--reps", type=int, default=2, help="--same-object: timed calls per side")
    ap.add_argument("--worker", choices=("ours", "theirs"), help=argparse.SUPPRESS)
    ap.add_argument("--bs", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--workdir", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        return worker(a.worker, a.bs, a.workdir)
    if a.same_object:
        return same_object(a)

    import camzoo
    from camzoo.explainers.base import minmax
    from camzoo.data.images import sample_photos

    sizes = int_list(a.batch_sizes)
    with tempfile.TemporaryDirectory(prefix="bench_scorecam_") as work:
        bb, weights = load_seeded(a.backbone, "cpu")
        if weights == "random":  # the workers load the same seeded weights from a file
            weights = os.path.join(work, "weights.pt")
            torch.save(bb.model.state_dict(), weights)
        bb = camzoo.load_backbone(a.backbone, weights=weights, device="cpu")
        layer = a.layer or bb.default_layer
        photos = sample_photos()[: a.images]
        x = torch.stack([bb.preprocess(im) for _, im in photos])
        with torch.inference_mode():
            y = bb.model(x).argmax(1)
        torch.save((x, y), os.path.join(work, "inputs.pt"))
        json.dump({"backbone": a.backbone, "weights": weights, "layer": layer, "threads": a.threads},
                  open(os.path.join(work, "config.json"), "w"))
        K = bb.channels(layer)
        print(f"backbone {a.backbone} ({'random weights' if weights else 'embedded weights'}), layer {layer} "
              f"(K={K}), {len(photos)} images {tuple(x.shape[-2:])}: {', '.join(n for n, _ in photos)}; "
              f"{K + 1} forwards per image on each side; torch threads per worker: "
              f"{a.threads or torch.get_num_threads()}; load average before: {load_average()[0]:.2f}")
        print(f"machine: {machine()}")
        print(f"{'method':<28}{'batch':>6}{'wall s':>9}{'CPU s':>9}{'peak MiB':>10}")
        runs = []
        for bs in sizes:  # interleaved, so load changes on a shared machine hit both sides alike
            for side in ("ours", "theirs"):
                r = _run_worker(side, bs, work)
                runs.append(r)
                name = "camzoo scorecam grad-cam" if side == "ours" else "pytorch-grad-cam ScoreCAM"
                print(f"{name:<28}{bs:>6}{r['wall_s']:>9.2f}{r['cpu_s']:>9.2f}{r['peak_mib']:>10.1f}"
                      + ("" if r["exact_peak"] else "  (ru_maxrss fallback)"), flush=True)
        key = "cpu_s" if a.rank_by == "cpu" else "wall_s"
        best = {s: min((r for r in runs if r["side"] == s), key=lambda r: r[key]) for s in ("ours", "theirs")}
        o, t = best["ours"], best["theirs"]
        ours_map = torch.load(os.path.join(work, f"map_ours_{o['bs']}.pt"))
        theirs_map = torch.load(os.path.join(work, f"map_theirs_{t['bs']}.pt"))
        diff = (minmax(ours_map) - theirs_map).abs().max().item()
        print(f"best batch size (by {a.rank_by} time): camzoo {o['bs']}, pytorch-grad-cam {t['bs']}; "
              f"load average after: {load_average()[0]:.2f}")
        print(f"time ratio theirs/ours, wall:     {t['wall_s'] / o['wall_s']:.2f}x")
        print(f"time ratio theirs/ours, CPU time: {t['cpu_s'] / o['cpu_s']:.2f}x")
        print(f"peak-memory ratio ours/theirs:    {o['peak_mib'] / t['peak_mib']:.3f} "
              f"({o['peak_mib']:.1f} MiB vs {t['peak_mib']:.1f} MiB)")
        print(f"max |minmax(ours) - theirs|:      {diff:.2e}")


if __name__ == "__main__":
    main()
