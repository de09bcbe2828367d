"""Capacity plan: GPU-hours for the L-CAM Table 1 protocol and for full ImageNet val, and how many
GPUs make each an overnight job -- an ESTIMATE unless a GPU check has been run.

Model: the engine's time per image = (forwards per image of the protocol) x (time of one forward
at the best batch size) x (engine overhead), as ``benchmarks.speed.bench_engine`` measures it.

- Forwards per image are counted exactly from camzoo itself: each method's ``forward_passes``
  on the real backbone (Score-CAM: K + 1 with K the channels of the default layer; RISE: its
  masks) twice (the map, and the ADCC Coherency map of ``x * V``), plus per method the metric
  forwards of every protocol (AD/IC: 3; ADCC: 1; insertion + deletion: 2 x (steps + 1)), plus
  one clean forward. Gradient explainers' backward passes (a few per image) are left out.
- The forward time: with ``--gpu-json OUTDIR/throughput.json`` (the GPU check's output), the
  measured bf16 forward. Otherwise the CPU forward measured here (fp32, best batch size,
  ``--threads``) scaled by a sourced GPU/CPU ratio: GPU images/s from timm's published inference
  benchmark (huggingface/pytorch-image-models, results/benchmark-infer-amp-nhwc-pt240-cu124-
  rtx4090.csv: RTX 4090, PyTorch 2.4.0, CUDA 12.4, AMP, channels_last, batch 512 -- the
  layout and precision camzoo's engine runs in) over the CPU images/s measured here.
- The overhead: 1.10, the largest strict engine-overhead ratio measured on CPU
  (benchmarks/README.md); the GPU target is <= 1.2 (unmeasured here: multiply by 1.2/1.1 for
  the margin).

Usage::

    python -m benchmarks.speed.capacity_plan                # measures the CPU forwards (minutes)
    python -m benchmarks.speed.capacity_plan --cpu-rates vgg16=1.2,resnet50=5.1,...   # no measuring
    python -m benchmarks.speed.capacity_plan --gpu-json results/gpu_check/throughput.json

(from the repository root).
"""
from __future__ import annotations

import json
import math
import sys

import torch

from benchmarks._common import add_threads, forward_rate, int_list, load_average, load_seeded, machine, parser

#: timm's RTX 4090 inference benchmark (AMP, NHWC, batch 512, PyTorch 2.4.0 / CUDA 12.4), images/s
TIMM_4090_NHWC_AMP = {"efficientnet_lite0": 11509.61, "resnet18": 18247.43, "resnet50": 5088.39,
                      "resnet101": 3320.94, "resnext50_32x4d": 4219.51, "vgg16": 2904.86}
TIMM_SOURCE = ("huggingface/pytorch-image-models results/benchmark-infer-amp-nhwc-pt240-cu124-rtx4090.csv "
               "(file last changed in commit ee5b1e82)")
#: the L-CAM paper's RISE masks (4000 for VGG-16, 8000 for ResNet-50; 8000 for the other ResNets)
RISE_MASKS = {"vgg16": 4000, "efficientnet_lite0": 4000}
#: 9 methods of the L-CAM Table 1 protocol: the 7 built-ins and the two L-CAM heads (1 forward)
METHODS = ["gradcam", "gradcam++", "xgradcam", "smoothgradcam++", "scorecam", "rise", "fakecam"]
LEARNED_FW = {"lcam-fm": 1, "lcam-img": 1}
OVERHEAD = 1.10
OVERNIGHT_H = 10.0


def forwards_per_image(bb, name: str, steps: int) -> dict:
    """Exact forwards per image of every method and metric of the protocol on ``bb``."""
    import camzoo
    from camzoo.metrics.protocol import PROTOCOLS

    fw = {}
    for m in METHODS:
        opts = {"n_masks": RISE_MASKS.get(name, 8000)} if m == "rise" else {}
        fw[m] = int(camzoo.get_explainer(m, **opts).forward_passes(bb))
    fw.update(LEARNED_FW)
    lcam = len(PROTOCOLS.get("lcam").options()["nus"])
    metric = lcam + 1 + 2 * (steps + 1)  # AD/IC masks, the forward of E, insertion + deletion
    explain = 2 * sum(fw.values())  # the map, and the Coherency map of E = x * V
    return {"methods": fw, "explain": explain, "metric": metric * len(fw), "clean": 1,
            "total": explain + metric * len(fw) + 1}


def cpu_rate(bb, sizes, reps) -> float:
    """Best images/s of an fp32 forward (+ softmax) on CPU over ``sizes``."""
    return max(forward_rate(bb.model, bs, 224, "cpu", reps=reps, warmup=1) for bs in sizes)


def main() -> int:
    ap = parser(__doc__)
    ap.add_argument("--backbones", default="vgg16,resnet50,resnet18,resnet101,resnext50_32x4d,efficientnet_lite0")
    ap.add_argument("--steps", type=int, default=224)
    add_threads(ap, default=2, help="torch threads for the CPU forwards")
    ap.add_argument("--batch-sizes", default="8,16")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--cpu-rates", default=None, help="name=img/s,... measured before (skips measuring)")
    ap.add_argument("--gpu-json", default=None, help="throughput.json of benchmarks/gpu_check.sh")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from camzoo.engine.timing import tune_cpu_allocator

    tune_cpu_allocator()
    given = dict(kv.split("=") for kv in a.cpu_rates.split(",")) if a.cpu_rates else {}
    gpu_meas = {}
    if a.gpu_json:
        with open(a.gpu_json) as f:
            g = json.load(f)
        gpu_meas = {k: v["forward"]["bf16"]["best"] for k, v in g["backbones"].items()}
        print(f"GPU forward rates measured by the GPU check: {g['device']}")
    load0 = load_average()[0]
    print(f"machine: {machine('cpu')}")
    rows = []
    for name in a.backbones.split(","):
        bb, _ = load_seeded(name, "cpu")
        fw = forwards_per_image(bb, name, a.steps)
        cpu = float(given[name]) if name in given else cpu_rate(bb, int_list(a.batch_sizes), a.reps)
        gpu = gpu_meas.get(name, TIMM_4090_NHWC_AMP[name])
        cpu_s = fw["total"] / cpu * OVERHEAD  # the engine's seconds per image on this CPU
        gpu_s = cpu_s / (gpu / cpu)  # scaled by the GPU/CPU forward ratio
        rows.append((name, fw, cpu, gpu, cpu_s, gpu_s))
        print(f"{name}: {fw['total']} forwards/image ({fw['methods']}), CPU {cpu:.2f} img/s, "
              f"GPU {gpu:.0f} img/s ({'measured' if name in gpu_meas else 'timm RTX 4090'}), ratio "
              f"{gpu / cpu:.0f}x, engine {cpu_s:.1f} s/img on CPU -> {gpu_s:.2f} s/img on GPU", flush=True)
        del bb
    kind = "measured GPU forwards" if gpu_meas else "ESTIMATE: CPU-measured forwards x sourced GPU/CPU ratio"
    print(f"\nCapacity plan ({kind}); {a.steps} insertion/deletion steps, 9 methods (7 built-in + "
          f"L-CAM-Fm, L-CAM-Img), every metric; engine overhead {OVERHEAD}; CPU: {a.threads} threads, "
          f"load average {load0:.1f}; overnight = {OVERNIGHT_H:.0f} h")
    print(f"GPU source: {'the GPU check' if gpu_meas else TIMM_SOURCE}\n")
    print("| backbone | forwards / image | CPU img/s (here) | GPU img/s | GPU/CPU | GPU s / image |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, fw, cpu, gpu, cpu_s, gpu_s in rows:
        print(f"| {name} | {fw['total']:,} | {cpu:.2f} | {gpu:,.0f} | {gpu / cpu:,.0f} | {gpu_s:.2f} |")
    by = {r[0]: r[5] for r in rows}
    print("\n| job | GPU-hours | GPUs for an overnight job |")
    print("|---|---:|---:|")
    if "vgg16" in by and "resnet50" in by:
        h = 2000 * (by["vgg16"] + by["resnet50"]) / 3600
        print(f"| L-CAM Table 1: 2,000 val images x (VGG-16 + ResNet-50) | {h:.1f} | {math.ceil(h / OVERNIGHT_H)} |")
    h = 50000 * sum(by.values()) / 3600
    print(f"| 50,000 val images x {len(by)} backbones ({', '.join(by)}) | {h:,.0f} | {math.ceil(h / OVERNIGHT_H)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
