"""Why trained L-CAM heads do or do not beat Grad-CAM: two diagnostics on Imagenette + Lite0.

Run after ``benchmarks.studies.learned_imagenette`` (it reuses that study's split and feature
cache), from the repository root::

    python -m benchmarks.studies.learned_diagnosis --out results/learned_imagenette

1. ``maps``: AD(100%) / IC(100%) of each trained head's map on the held-out validation
   photos (model-truth class), under three ways of turning the head's output ``L`` into a
   saliency map: the paper's inference map ``minmax(L)`` (Eq. 9, what camzoo evaluates), the
   training mask ``sigmoid(L)`` that the loss actually optimized, and ``minmax(sigmoid(L))``;
   with the map's mean value (its "area") beside each, and Grad-CAM and an untrained head as
   references. AD(100%) rewards large maps (``V = 1`` scores AD 0), so the area is part of
   every comparison.
2. ``caminit``: an L-CAM-Fm head whose rows start as the classifier's own FC rows (zero bias),
   i.e. ``minmax(L)`` starts equal to CAM (= Grad-CAM at Lite0's last layer, before the
   ReLU), trained with the paper's loss exactly like the random-init head of the claim run.
   If it ends with a lower held-out loss than the random-init head, the random-init training
   has not reached the optimum of the paper's own loss; if its AD(100%) does not improve while
   its loss falls, the loss and the metric disagree on Lite0.

Prints Markdown; writes ``OUT/diagnosis.md`` (one stage: ``OUT/diagnosis-<stage>.md``).
"""
from __future__ import annotations

import os
import sys
import time

import torch

import camzoo
from benchmarks._common import IMAGENETTE, REPO, Report, command, machine, parser, quiet
from camzoo.explainers.base import minmax, upsample
from camzoo.explainers.learned.lcam import LCAMHead, load_head
from camzoo.metrics.lcam_protocol import average_drop, increase_in_confidence, masked_confidence
from camzoo.metrics.scorer import Scorer
from camzoo.train.cache import cached_training_set
from camzoo.train.data import TrainImages, training_data
from camzoo.train.lcam import LCAMTask
from camzoo.train.loop import exponential_decay, fit, sgd

REPORT = Report()
say = REPORT.say


def held_out(a, bb):
    tr, va = training_data(a.data, bb, val_fraction=a.val_fraction, seed=a.seed,
                           labels_file=os.path.join(a.out, "train_labels.csv"))
    n = min(a.images, len(va))
    return tr, TrainImages(va.items[:n], bb, augment=False, seed=a.seed, root=va.root)


def maps(a, bb, va) -> None:
    x = torch.stack([va[i][0] for i in range(len(va))])
    with torch.inference_mode():
        A, logits = bb.features_and_logits(x)
    c = logits.argmax(1)
    Y = logits.softmax(1).gather(1, c[:, None])[:, 0]
    size = tuple(x.shape[-2:])

    scorer = Scorer(bb.model, eval_batch_size=64)

    def score(V):  # the lcam protocol at nu = 100 %: O = p_c(normalize(x01 * V))
        O = masked_confidence(scorer, bb.denormalize(x), V, c, bb.normalize, nus=(1.0,))[:, 0]
        return float(average_drop(Y, O).mean()), float(increase_in_confidence(Y, O).mean()), float(V.mean())

    up = lambda m: upsample(m, size).clamp(0, 1)  # noqa: E731
    say(f"## 1. Map transforms ({len(va)} held-out validation photos, model-truth class)")
    say("")
    say("| map | AD(100%) | IC(100%) | mean of V (area) |")
    say("|---|---|---|---|")
    g = camzoo.explain("gradcam", bb, x, c)
    say("| Grad-CAM | %.2f | %.2f | %.3f |" % score(g))
    untrained = LCAMHead(A.shape[1], bb.num_classes, generator=torch.Generator().manual_seed(a.seed))
    heads = [("untrained head", untrained)]
    for name in a.heads.split(","):
        p = os.path.join(a.out, "heads", f"{name}.best.pt")
        if os.path.isfile(p):
            heads.append((name, load_head(p, bb.device)[0]))
    with torch.inference_mode():
        for name, head in heads:
            L = head(A, c)
            for tname, V in (("minmax(L)", up(minmax(L))), ("sigmoid(L)", up(torch.sigmoid(L))),
                             ("minmax(sigmoid(L))", up(minmax(torch.sigmoid(L))))):
                say(f"| {name}: {tname} | %.2f | %.2f | %.3f |" % score(V))
    say("")


def caminit(a, bb, tr, va) -> None:
    say(f"## 2. L-CAM-Fm from CAM vs from random init ({a.epochs} epochs, lr {a.lr}, paper loss)")
    say("")
    say("| init | epoch | held-out loss | AD(100%) | IC(100%) | mask area |")
    say("|---|---|---|---|---|---|")
    for init in ("cam", "random"):
        task = LCAMTask(bb, "fm", seed=a.seed)
        if init == "cam":
            fc = bb.model.classifier
            with torch.no_grad():
                task.net.weight.copy_(fc.weight[:, :, None, None])
                task.net.bias.zero_()
        trs = cached_training_set(tr, bb, task.layer, a.cache or os.path.join(a.out, "heads", "feature_cache"),
                                  views="center+flip", batch_size=64, progress=False, log=print)
        v0 = task.evaluate(torch.utils.data.DataLoader(va, batch_size=64))
        say(f"| {init} | 0 | {v0['loss']:.3f} | {v0['ad100']:.2f} | {v0['ic100']:.2f} | {v0['area']:.3f} |")
        out = os.path.join(a.out, "diagnosis", f"fm-{init}.pt")
        os.makedirs(os.path.dirname(out), exist_ok=True)
        t0 = time.perf_counter()
        res = fit(task, trs, va, epochs=a.epochs, batch_size=64,
                  optimizer=sgd(a.lr, momentum=0.9, nesterov=True, weight_decay=5e-4),
                  scheduler=exponential_decay(0.95), out=out, overwrite=True, seed=a.seed,
                  device=bb.device, progress=False, log=quiet, figure=False)
        for h in res["history"]:
            if h["epoch"] in (1, 5, 10, 20, a.epochs) or h["epoch"] % 25 == 0:
                v = h["val"]
                say(f"| {init} | {h['epoch']} | {v['loss']:.3f} | {v['ad100']:.2f} | {v['ic100']:.2f} | "
                    f"{v['area']:.3f} |")
        print(f"[{init}] {time.perf_counter() - t0:.0f} s", flush=True)
    say("")


def main() -> None:
    ap = parser(__doc__, full=True)
    ap.add_argument("--data", default=IMAGENETTE)
    ap.add_argument("--out", default=os.path.join(REPO, "results", "learned_imagenette"))
    ap.add_argument("--cache", default=None, help="feature cache root (default OUT/heads/feature_cache)")
    ap.add_argument("--stages", default="maps,caminit")
    ap.add_argument("--heads", default="lcam-fm,lcam-fm-ce,lcam-img,lcam-img-ce")
    ap.add_argument("--images", type=int, default=64, help="held-out validation photos (the first N)")
    ap.add_argument("--val-fraction", type=float, default=0.05)
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    if not os.path.isfile(os.path.join(a.out, "train_labels.csv")):
        sys.exit(f"{a.out}/train_labels.csv not found: run python -m benchmarks.studies.learned_imagenette first")
    bb = camzoo.load_backbone("efficientnet_lite0", device="cpu")
    tr, va = held_out(a, bb)
    say("# L-CAM on Lite0: diagnosis")
    say("")
    say(f"machine: {machine(bb.device)}; command: {command()}")
    say("")
    if "maps" in a.stages:
        maps(a, bb, va)
    if "caminit" in a.stages:
        caminit(a, bb, tr, va)
    stages = [st for st in ("maps", "caminit") if st in a.stages]
    name = "diagnosis.md" if len(stages) == 2 else f"diagnosis-{stages[0]}.md"
    REPORT.write(os.path.join(a.out, name))


if __name__ == "__main__":
    main()
