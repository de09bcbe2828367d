"""The GPU check's measurements (run by ``benchmarks/gpu_check.sh``; each part also runs on CPU
with ``--cpu --quick`` so that it is tested where there is no GPU).

``python -m benchmarks.speed.gpu_check throughput --out DIR``
    For each backbone (default: the embedded Lite0, ResNet-50 and VGG-16, the last two with
    seeded random weights -- timing does not depend on the weights):

    - a plain forward (inference mode, channels_last, softmax) in fp32 and in bf16 at each
      batch size of ``--batch-sizes`` (a batch that runs out of memory ends the sweep): the
      best images/s of each precision; with ``--compile`` also ``torch.compile``'s forward in
      bf16 at that best batch (and its compile time);
    - one ``camzoo bench`` run of every built-in explainer and every protocol on ``--images``
      photos under the L-CAM protocol's settings (224 insertion/deletion steps, RISE with
      4000 masks, 8000 on ResNet-50, Score-CAM on the default layer) in ``--amp``
      (bf16 on GPU), batch sizes chosen by the engine: each method's map time per image, each
      metric family's time per (image, method), the engine's total time per image (every
      method and metric: what the capacity plan in benchmarks/README.md multiplies), its
      forwards per image, and the forwards it made per second against the plain forward's best
      (the engine's efficiency on the device). An untimed run on one image comes first
      (kernel selection, lazy imports).

    Writes ``DIR/throughput.md`` and ``DIR/throughput.json``.

``python -m benchmarks.speed.gpu_check agreement --out DIR --data PHOTOS``
    Lite0 on the labelled photos, every built-in explainer and protocol (224 steps; RISE with
    ``--rise-masks`` masks, 1000 by default, to fit the check's time), once in fp32 and once in
    bf16; writes ``DIR/agreement.md``: per-image row agreement (mean and largest absolute
    difference per column), whether each table column ranks the methods alike at the printed
    precision, and both runs' engine time (:mod:`camzoo.results.agreement`).
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time

import torch

from benchmarks._common import forward_rate, int_list, load_seeded, machine, parser, quiet

GPU_BACKBONES = "efficientnet_lite0,resnet50,vgg16"
#: the L-CAM paper's RISE masks per backbone (4000 otherwise)
RISE_MASKS = {"resnet50": 8000, "vgg16": 4000}
FAMILIES = (("clean", ["clean"]), ("lcam", ["lcam"]), ("adcc", ["adcc"]),
            ("rise", ["insertion", "deletion"]))


def _device(a) -> torch.device:
    from camzoo.utils import resolve_device

    return torch.device("cpu") if a.cpu else resolve_device("cuda")


def sweep(model, size, device, amp, sizes, reps):
    from camzoo.engine.accel import is_oom

    rates = {}
    for bs in sizes:
        try:
            rates[bs] = forward_rate(model, bs, size, device, amp, reps)
        except Exception as exc:  # noqa: BLE001
            if not is_oom(exc):
                raise
            break
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return rates


def bench_once(a, name, weights, device, out, images, masks, amp, steps):
    from camzoo.bench import BenchConfig, run
    from camzoo.engine.config import resolve_methods

    methods = a.methods or ",".join(resolve_methods("all", {}))
    return run(BenchConfig(backbone=name, weights=weights, methods=methods, data=a.data, limit=images,
                           seed=0, metric_options={"rise": {"steps": steps}}, options={"rise": {"n_masks": masks}}, device=str(device),
                           amp=amp, out=out, progress=False, figures=False), echo=quiet)


def throughput(a) -> int:
    device = _device(a)
    # fp32 is IEEE fp32, as in the engine (which switches TF32 off for fp32 runs)
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    amp = None if a.amp == "none" else a.amp
    sizes = int_list(a.batch_sizes)
    results = {"device": machine(device), "amp": amp, "images": a.images, "backbones": {}}
    md = [f"# Throughput: {machine(device)}", "",
          f"Plain forward: images/s at the best of batch sizes {a.batch_sizes} (channels_last, "
          f"inference mode). Engine: every built-in explainer and protocol on {a.images} photos "
          f"({a.data or 'the sample photos'}) in {amp or 'fp32'}, {a.steps} insertion/deletion steps, "
          "RISE masks as the L-CAM paper (4000; ResNet-50 8000) unless --rise-masks; batch sizes "
          "chosen by the engine.", ""]
    for name in a.backbones.split(","):
        t0 = time.perf_counter()
        bb, weights = load_seeded(name, device)  # py: tiny models: seeded random
        size = int(bb.input_size or 224)
        r = {"forward": {}}
        for prec in ("fp32", "bf16"):
            rates = sweep(bb.model, size, device, None if prec == "fp32" else "bf16", sizes, a.reps)
            best = max(rates, key=rates.get) if rates else None
            r["forward"][prec] = {"rates": rates, "best_batch": best, "best": rates.get(best)}
        cprec = "bf16" if amp == "bf16" else "fp32"  # compiled: in the engine's precision
        if a.compile and name in a.compile.split(","):
            tc = time.perf_counter()
            cm = torch.compile(bb.model)
            bs = r["forward"][cprec]["best_batch"]
            forward_rate(cm, bs, size, device, amp, 1)  # compiles
            compile_s = time.perf_counter() - tc
            r["forward"][f"{cprec}_compiled"] = {"best_batch": bs, "compile_s": compile_s,
                                                 "best": forward_rate(cm, bs, size, device, amp, a.reps),
                                                 "eager": forward_rate(bb.model, bs, size, device, amp, a.reps)}
        f = r["forward"]
        line = (f"Plain forward: fp32 {f['fp32']['best']:.1f} img/s (batch {f['fp32']['best_batch']}), "
                f"bf16 {f['bf16']['best']:.1f} img/s (batch {f['bf16']['best_batch']})")
        if f"{cprec}_compiled" in f:
            c = f[f"{cprec}_compiled"]
            line += (f"; torch.compile {cprec} {c['best']:.1f} img/s vs eager {c['eager']:.1f} right after "
                     f"({c['best'] / c['eager']:.2f}x; compile {c['compile_s']:.0f} s, batch {c['best_batch']})")
        if a.forward_only:
            results["backbones"][name] = r
            md += [f"## {name}", "", line + ".", ""]
            print(md[-2], flush=True)
            continue
        masks = a.rise_masks or RISE_MASKS.get(name, 4000)
        with tempfile.TemporaryDirectory() as tmp:
            bench_once(a, name, weights, device, os.path.join(tmp, "warm"), 1, 64, amp, a.steps).close()
            run_ = bench_once(a, name, weights, device, os.path.join(tmp, "run"), a.images, masks, amp, a.steps)
            rows, fw, tm = run_.rows(), run_.forwards(), run_.timings
            n = rows.image_id.nunique()
            methods = list(run_.config["methods"])
            per_method = {m: float(rows[rows.method == m].seconds.mean()) for m in methods}
            fams = {}
            for fam, keys in FAMILIES:
                wall = tm["wall_s"].get("clean" if fam == "clean" else f"metric/{fam}", 0.0)
                cnt = int(fw[fw.family.isin(keys)].forwards.sum())
                per = n if fam == "clean" else n * len(methods)
                fams[fam] = {"s_per_img": wall / per, "forwards": cnt}
            fams["adcc_explain"] = {"s_per_img": tm["wall_s"].get("adcc_explain", 0.0) / (n * len(methods)),
                                    "forwards": int(fw[fw.family == "adcc_explain"].forwards.sum())}
            loop = tm["process"]["loop_wall_s"]
            total_fw = int(fw.forwards.sum())
            r["engine"] = {"images": n, "methods": per_method, "families": fams, "loop_s": loop,
                           "s_per_img": loop / n, "forwards_per_img": total_fw / n,
                           "forwards_per_s": total_fw / loop, "rise_masks": masks,
                           "batch_size": tm["process"]["batch_size"],
                           "eval_batch_size": tm["process"]["eval_batch_size"],
                           "load_wait_s": tm["wall_s"].get("load_wait", 0.0),
                           "fw_per_method": {m: int(run_.config["methods"][m]["forward_passes"]) for m in methods}}
            run_.close()
        r["seconds"] = time.perf_counter() - t0
        results["backbones"][name] = r
        e = r["engine"]
        ref = f["bf16" if amp == "bf16" else "fp32"]["best"]
        md += [f"## {name} ({'random' if weights == 'random' else 'its own'} weights)", "", line + ".",
               f"Engine: {e['s_per_img']:.3f} s/img for all {len(methods)} methods and every metric "
               f"({e['forwards_per_img']:.0f} forwards per image, {e['forwards_per_s']:.0f} forwards/s = "
               f"{e['forwards_per_s'] / ref:.2f} of the plain {amp or 'fp32'} forward's best; batch "
               f"{e['batch_size']}, eval batch {e['eval_batch_size']}, waited {e['load_wait_s']:.2f} s for "
               f"images; RISE {masks} masks).", "",
               "| method | #FW | map s/img |", "|---|---:|---:|"]
        md += [f"| {m} | {e['fw_per_method'][m]} | {s:.4f} |" for m, s in per_method.items()]
        md += ["", "| metric family | s per (image, method) | forwards |", "|---|---:|---:|"]
        md += [f"| {k} | {v['s_per_img']:.4f} | {v['forwards']} |" for k, v in fams.items()]
        md.append("")
        print("\n".join(md[-(len(per_method) + len(fams) + 9):]), flush=True)
        del bb
        if device.type == "cuda":
            torch.cuda.empty_cache()
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "throughput.md"), "w") as f:
        f.write("\n".join(md) + "\n")
    with open(os.path.join(a.out, "throughput.json"), "w") as f:
        json.dump(results, f, indent=1, default=str)
    return 0


def agreement(a) -> int:
    from camzoo.results.agreement import agreement_markdown

    device = _device(a)
    amp = "bf16"
    name = a.backbones.split(",")[0]
    if not (name == "efficientnet_lite0" or name.startswith("py:")):
        raise SystemExit(f"agreement needs a backbone with fixed weights (efficientnet_lite0, py:...), not {name}")
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for prec in ("fp32", amp):
            weights = None if name == "efficientnet_lite0" else "random"  # py: tiny models: seeded
            runs[prec] = bench_once(a, name, weights, device, os.path.join(tmp, prec), a.images,
                                    a.rise_masks or 1000, None if prec == "fp32" else amp, a.steps)
        t32, t16 = (runs[p].timings["process"]["loop_wall_s"] for p in ("fp32", amp))
        n = runs["fp32"].rows().image_id.nunique()
        text = (f"# bf16 vs fp32 agreement: {machine(device)}\n\n{name}, {n} images "
                f"({a.data or 'the sample photos'}), methods {a.methods or 'all built-in'}, every protocol, {a.steps} "
                f"steps, RISE {a.rise_masks or 1000} masks. Engine time: fp32 {t32:.1f} s, bf16 "
                f"{t16:.1f} s ({t32 / t16:.2f}x).\n\n" + agreement_markdown(runs["fp32"], runs[amp], "fp32", amp))
        for r in runs.values():
            r.close()
    print(text)
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "agreement.md"), "w") as f:
        f.write(text)
    return 0


def main() -> int:
    ap = parser(__doc__)
    ap.add_argument("what", choices=("throughput", "agreement"))
    ap.add_argument("--out", required=True)
    ap.add_argument("--cpu", action="store_true", help="run on CPU (the check's own test here)")
    ap.add_argument("--quick", action="store_true", help="tiny settings: the tiny CNN, 2 photos, few steps")
    ap.add_argument("--data", default=None, help="labelled photos (default: the six sample photos)")
    ap.add_argument("--backbones", default=None)
    ap.add_argument("--batch-sizes", default="32,64,128,256,512")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--images", type=int, default=None)
    ap.add_argument("--steps", type=int, default=224)
    ap.add_argument("--rise-masks", type=int, default=None)
    ap.add_argument("--amp", default="bf16", choices=("bf16", "fp16", "none"))
    ap.add_argument("--forward-only", action="store_true", help="throughput: plain (and compiled) forwards only")
    ap.add_argument("--methods", default=None, help="default: every built-in explainer")
    ap.add_argument("--compile", default="resnet50",
                    help="backbones whose bf16 forward is also compiled ('' = none; inductor takes a minute each)")
    a = ap.parse_args()
    if a.quick:
        a.backbones = a.backbones or "py:camzoo.models.testing:tiny_imagenet_backbone"
        a.batch_sizes, a.reps, a.steps = "2,4", 2, 4
        a.rise_masks = a.rise_masks or 16
        a.images = a.images or 2
        a.compile = ""
    a.backbones = a.backbones or (GPU_BACKBONES if a.what == "throughput" else "efficientnet_lite0")
    a.images = a.images or (4 if a.what == "throughput" else 32)
    if a.cpu and a.amp == "bf16" and a.what == "throughput":
        a.amp = "none"  # CPU bf16 autocast is slow without bf16 hardware: time fp32 there
    return throughput(a) if a.what == "throughput" else agreement(a)


if __name__ == "__main__":
    sys.exit(main())
