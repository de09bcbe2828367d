"""One training loop for every learned explainer (L-CAM heads, LFI-CAM's FIN, ...).

Contract
========
A learned explainer plugs in by subclassing :class:`TrainTask`:

``name``
    short string stored in checkpoints (``"lcam"``, ``"lficam"``); resume refuses another.
``modules() -> nn.Module``
    the trainable part. Its ``state_dict`` is what a checkpoint stores; the optimizer gets
    its parameters that require grad. Frozen parts (the backbone) are *not* in it.
``train_mode()`` / ``eval_mode()``
    put the trainable part in train / eval mode and keep frozen parts in eval mode
    (defaults: ``modules().train()`` / ``.eval()``; the frozen backbone is never touched).
``loss(net, x, y) -> (loss, logs)``
    ``net`` is ``modules()`` itself, or a ``DistributedDataParallel`` wrapper around it when
    running under torchrun: the task must run the trainable forward by calling ``net(...)``
    (exactly once per step, so DDP can synchronize gradients), never ``self.modules()``.
    ``x`` is the batch from the dataset (normalized images ``[B,3,H,W]``, or, from a
    feature cache (:mod:`camzoo.train.cache`), a dict of tensors such as ``{"A": features,
    "top1": ..., "gray": ...}``) and ``y`` its labels (LongTensor ``[B]``, ``-1`` where
    unknown), all on the device. Returns the scalar
    loss to minimize and a dict of float-valued tensors (0-dim, detached) to log (loss
    components); they are averaged over the epoch (and over ranks) for the progress bar and
    the history.
``evaluate(loader) -> dict[str, float]``
    held-out metrics after each epoch, run by rank 0 only, in eval mode and under
    ``torch.inference_mode()`` unless the task enables gradients itself (default: ``{}``).
``best_metric = ("loss", "min")``
    the held-out metric (a key of ``evaluate``'s dict) and direction that choose the best
    checkpoint (``NAME.best.pt``, see :mod:`camzoo.train.records`).
``metadata() -> dict``
    what the explainer needs to rebuild / validate itself (backbone, layer, variant, loss
    weights, ...); plain Python values only (str, int, float, bool, None, lists, dicts),
    since checkpoints are read with ``weights_only=True``. Stored in the checkpoint; on ``resume`` the keys listed in
    ``identity_keys`` must match the checkpoint's or training is refused.
``to(device)``
    move the trainable part (default: ``modules().to(device)``); the task owns its frozen
    backbone's placement.

:func:`fit` then handles: the data loaders (a ``DistributedSampler`` in every case, seeded by
``seed`` and the epoch; datasets with ``set_epoch(epoch)`` get it called, so per-sample
augmentation can be seeded per epoch too; a dataset with ``get_batch(indices) -> (x, y)``
reads whole batches itself, as :class:`camzoo.train.cache.CachedViews` does), the optimizer and per-epoch scheduler (given as
factories), a tqdm progress bar showing the running loss components, a checkpoint written
atomically after every epoch, the best-by-validation checkpoint, the per-step log
``NAME.train_log.csv`` and its curves ``NAME.training.png`` beside the checkpoint
(:mod:`camzoo.train.records`), ``resume``, and DistributedDataParallel when
``torch.distributed`` is initialized (see :func:`distributed`; ``torchrun --nproc_per_node N
-m camzoo train ...``; gloo on CPU, NCCL on CUDA). Only rank 0 writes files and evaluates.

Checkpoint format (``torch.save`` of a dict; load with :func:`load_checkpoint`, defined with the
explainers that read it in :mod:`camzoo.explainers.learned.checkpoint`)::

    {"format": "camzoo.train/1", "task": name, "state_dict": ..., "optimizer": ...,
     "scheduler": ... or None, "epoch": completed epochs, "epochs": planned epochs,
     "metadata": {**task.metadata(), "camzoo_version", "torch_version", "seed", "world_size",
                  "batch_size", "data": {"train_manifest", "val_manifest", "n_train", "n_val"}},
     "history": [{"epoch", "train": {...}, "val": {...}, "lr", "seconds", "cpu_seconds"}, ...],
     "best": {"metric", "mode", "value", "epoch"} or None}

``NAME.best.pt`` has the same format (``epoch`` = the best epoch, its history up to it).

Reproducibility: with the same seed, world size and batch size, an interrupted run resumed
from its checkpoint ends with the same weights as an uninterrupted one (tested).
"""
from __future__ import annotations

import contextlib
import hashlib
import math
import os
import time
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import BatchSampler, DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler

from ..explainers.learned.checkpoint import CHECKPOINT_FORMAT, load_checkpoint, save_checkpoint
from ..utils import resolve_device
from ..version import __version__

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], Any]


class TrainTask:
    """Base class of a learned explainer's training logic (see the module docstring)."""

    name: str = "task"
    #: metadata keys that must match between a checkpoint and the task to resume from it
    identity_keys: Sequence[str] = ()
    #: (held-out metric, "min" | "max") choosing the best checkpoint
    best_metric: Tuple[str, str] = ("loss", "min")

    def modules(self) -> nn.Module:
        raise NotImplementedError

    def train_mode(self) -> None:
        self.modules().train()

    def eval_mode(self) -> None:
        self.modules().eval()

    def to(self, device: torch.device) -> "TrainTask":
        self.modules().to(device)
        return self

    def loss(self, net: nn.Module, x: Tensor, y: Tensor) -> Tuple[Tensor, Dict[str, Tensor]]:
        raise NotImplementedError

    def evaluate(self, loader: Iterable) -> Dict[str, float]:
        return {}

    def metadata(self) -> Dict[str, Any]:
        return {}


# -- optimizers / schedulers as factories ---------------------------------------------------
def sgd(lr: float, momentum: float = 0.9, nesterov: bool = True,
        weight_decay: float = 5e-4) -> OptimizerFactory:
    """Factory for ``torch.optim.SGD`` (defaults: the L-CAM paper's settings)."""
    return lambda params: torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=nesterov,
                                          weight_decay=weight_decay)


def exponential_decay(gamma: float) -> SchedulerFactory:
    """Factory for a per-epoch ``ExponentialLR(gamma)`` (lr <- lr * gamma after each epoch)."""
    return lambda opt: torch.optim.lr_scheduler.ExponentialLR(opt, gamma=gamma)


def multistep(milestones: Sequence[int], gamma: float = 0.1) -> SchedulerFactory:
    """Factory for a per-epoch ``MultiStepLR`` (lr divided by 1/gamma at each milestone epoch)."""
    return lambda opt: torch.optim.lr_scheduler.MultiStepLR(opt, list(milestones), gamma=gamma)


# -- distributed --------------------------------------------------------------------------
def rank_and_world() -> Tuple[int, int]:
    """``(rank, world_size)`` of this process; ``(0, 1)`` when not distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@contextlib.contextmanager
def distributed(device: Union[None, str, torch.device] = None,
                timeout: Optional[float] = None) -> Iterator[torch.device]:
    """Initialize ``torch.distributed`` when launched by torchrun; yield this rank's device.

    Under torchrun (env ``WORLD_SIZE`` > 1) the process group is created with NCCL for CUDA
    and gloo for CPU, and destroyed on exit. ``device=None`` picks ``cuda:LOCAL_RANK`` when
    CUDA is available, else CPU; an explicit ``"cuda"`` becomes ``cuda:LOCAL_RANK``. Outside
    torchrun this only resolves the device. ``timeout``: seconds a collective may wait
    (torch's default when None; a bench rank waits at its final barrier for the slowest).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device)
    if dev.type == "cuda" and dev.index is None and world > 1:
        dev = torch.device("cuda", local)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    started = False
    if world > 1 and not dist.is_initialized():
        import datetime

        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo",
                                **({"timeout": datetime.timedelta(seconds=timeout)} if timeout else {}))
        started = True
    try:
        yield dev
    finally:
        if started:
            dist.destroy_process_group()


def _barrier() -> None:
    if rank_and_world()[1] > 1:
        dist.barrier()


# -- checkpoints ----------------------------------------------------------------------------
def manifest_hash(dataset: Optional[Dataset]) -> str:
    """A short hash identifying a dataset: of ``dataset.manifest()`` (a list of strings, e.g.
    relative file names with labels) when it has one, else of its class name and length."""
    if dataset is None:
        return "none"
    h = hashlib.sha256()
    if hasattr(dataset, "manifest"):
        for item in dataset.manifest():
            h.update(str(item).encode())
            h.update(b"\n")
    else:
        h.update(f"{type(dataset).__name__}:{len(dataset)}".encode())  # type: ignore[arg-type]
    return h.hexdigest()[:16]


def _mean_logs(sums: Dict[str, Tensor], count: Tensor) -> Dict[str, float]:
    """Average summed logs over all ranks (one all_reduce)."""
    if not sums:
        return {}
    keys = sorted(sums)
    vec = torch.stack([sums[k].float() for k in keys] + [count.float()])
    if rank_and_world()[1] > 1:
        vec = vec.to("cpu") if dist.get_backend() == "gloo" else vec
        dist.all_reduce(vec)
    vec = vec.cpu()
    n = max(float(vec[-1]), 1.0)
    return {k: float(v) / n for k, v in zip(keys, vec[:-1])}


def _fmt(d: Dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4g}" for k, v in d.items())


def to_device(batch: Any, device: torch.device) -> Any:
    """``batch`` (a tensor, or dicts / lists / tuples of them) moved to ``device``."""
    if isinstance(batch, Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


class _Batches(Dataset):
    """``dataset.get_batch`` as a map-style dataset indexed by a list of indices."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, indices):
        return self.dataset.get_batch(indices)  # type: ignore[attr-defined]


# -- the loop -------------------------------------------------------------------------------
def fit(
    task: TrainTask,
    train_set: Dataset,
    val_set: Optional[Dataset] = None,
    *,
    epochs: int,
    batch_size: int,
    optimizer: OptimizerFactory,
    scheduler: Optional[SchedulerFactory] = None,
    out: Union[str, os.PathLike, None] = None,
    resume: bool = False,
    overwrite: bool = False,
    seed: int = 0,
    num_workers: int = 0,
    device: Union[None, str, torch.device] = None,
    progress: bool = True,
    eval_batch_size: Optional[int] = None,
    log: Callable[[str], None] = print,
    best_metric: Optional[Tuple[str, str]] = None,
    records: bool = True,
    figure: bool = True,
) -> Dict[str, Any]:
    """Train ``task`` on ``train_set``; evaluate on ``val_set`` and checkpoint after each epoch.

    Args:
        task: the :class:`TrainTask`.
        train_set, val_set: map-style datasets of ``(x, y)``; ``x`` a float tensor (normalized
            image ``[3,H,W]``), ``y`` an int (``-1`` = unknown). ``val_set`` may be None.
        epochs: total epochs (with ``resume``, the run continues up to this number).
        batch_size: the *global* batch size; each of N ranks gets ``batch_size // N``
            (must divide).
        optimizer: factory ``params -> Optimizer`` (e.g. :func:`sgd`).
        scheduler: factory ``optimizer -> scheduler`` stepped once per epoch, or None.
        out: checkpoint path written after every epoch (None: no checkpoint).
        resume: continue from ``out`` if it exists (weights, optimizer, scheduler, epoch,
            history); the task's ``identity_keys`` metadata must match.
        overwrite: replace an existing ``out`` when not resuming (otherwise an error).
        seed: seeds the sampler order (``seed + epoch``) and is passed to datasets via
            ``set_epoch``; the task seeds its own initialization.
        num_workers: DataLoader worker processes.
        device: where the trainable part runs (default: ``task``'s parameters' device).
        progress: show a tqdm bar (rank 0 only).
        eval_batch_size: batch size of the held-out loader (default: ``batch_size``).
        log: where per-epoch summary lines go (rank 0 only).
        best_metric: ``(held-out metric, "min" | "max")`` choosing ``NAME.best.pt``
            (default: ``task.best_metric``); the checkpoint of the first epoch with the best
            value is kept (strictly better values replace it). Needs ``val_set``.
        records: with ``out``, also write ``NAME.best.pt``, ``NAME.train_log.csv`` and
            ``NAME.training.png`` beside it (:mod:`camzoo.train.records`).
        figure: redraw ``NAME.training.png`` after every epoch (~1.5 CPU-s each; off for
            tiny runs).
    Returns:
        the final checkpoint dict (without optimizer/scheduler states) with ``history`` and
        ``best``.
    """
    from .records import better, read_log, run_files, write_log

    rank, world = rank_and_world()
    if batch_size % world:
        raise ValueError(f"batch_size {batch_size} is not divisible by the {world} processes")
    per_rank = batch_size // world
    if device is None:
        p = next(iter(task.modules().parameters()), None)
        device = p.device if p is not None else torch.device("cpu")
    device = torch.device(device)
    task.to(device)
    module = task.modules()
    params = [p for p in module.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"task {task.name!r} has no trainable parameters")
    opt = optimizer(params)
    sched = scheduler(opt) if scheduler is not None else None

    meta = dict(task.metadata())
    meta.update(camzoo_version=__version__, torch_version=str(torch.__version__), seed=seed,
                world_size=world, batch_size=batch_size,
                data={"train_manifest": manifest_hash(train_set),
                      "val_manifest": manifest_hash(val_set),
                      "n_train": len(train_set),  # type: ignore[arg-type]
                      "n_val": len(val_set) if val_set is not None else 0})  # type: ignore[arg-type]
    start_epoch, history = 0, []
    metric, mode = best_metric or task.best_metric
    better(0.0, None, mode)  # validates mode
    best: Optional[Dict[str, Any]] = None
    rows: List[Dict[str, Any]] = []  # the per-step log (rank 0)
    out = os.fspath(out) if out is not None else None
    files = run_files(out) if out is not None and records else None
    if out is not None and os.path.exists(out):
        if resume:
            ck = load_checkpoint(out)
            if ck.get("task") != task.name:
                raise ValueError(f"cannot resume: {out} was trained by task {ck.get('task')!r}, "
                                 f"this is {task.name!r}")
            bad = {k: (ck["metadata"].get(k), meta.get(k)) for k in task.identity_keys
                   if ck["metadata"].get(k) != meta.get(k)}
            if bad:
                raise ValueError(f"cannot resume from {out}: it differs in " + "; ".join(
                    f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in bad.items()))
            module.load_state_dict(ck["state_dict"])
            opt.load_state_dict(ck["optimizer"])
            if sched is not None and ck.get("scheduler") is not None:
                sched.load_state_dict(ck["scheduler"])
            start_epoch, history = int(ck["epoch"]), list(ck.get("history", []))
            best = ck.get("best")
            if files is not None:
                rows = read_log(files.log, upto_epoch=start_epoch)
            if rank == 0:
                log(f"resuming {out} after epoch {start_epoch}/{epochs}")
        elif not overwrite:
            raise FileExistsError(f"{out} exists; pass resume=True (--resume) to continue it or "
                                  f"overwrite=True (--overwrite) to start over")
    if files is not None and start_epoch == 0 and rank == 0:
        for stale in (files.best, files.log, files.plot):  # of an earlier run: start over
            if os.path.exists(stale):
                os.remove(stale)

    net: nn.Module = module
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        net = DDP(module, device_ids=[device.index] if device.type == "cuda" else None)

    sampler = DistributedSampler(train_set, num_replicas=world, rank=rank, shuffle=True,
                                 seed=seed, drop_last=False)
    if hasattr(train_set, "get_batch"):  # the dataset reads whole batches itself
        loader = DataLoader(_Batches(train_set), sampler=BatchSampler(sampler, per_rank, False),
                            batch_size=None, num_workers=num_workers,
                            pin_memory=device.type == "cuda")
    else:
        loader = DataLoader(train_set, batch_size=per_rank, sampler=sampler,
                            num_workers=num_workers, pin_memory=device.type == "cuda",
                            drop_last=False, persistent_workers=False)
    val_loader = None
    if val_set is not None and len(val_set) > 0:  # type: ignore[arg-type]
        val_loader = DataLoader(val_set, batch_size=eval_batch_size or batch_size, shuffle=False,
                                num_workers=num_workers, pin_memory=device.type == "cuda")

    def checkpoint(epoch: int) -> Dict[str, Any]:
        return {"format": CHECKPOINT_FORMAT, "task": task.name,
                "state_dict": {k: v.detach().cpu() for k, v in module.state_dict().items()},
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict() if sched is not None else None,
                "epoch": epoch, "epochs": epochs, "metadata": meta, "history": list(history),
                "best": dict(best) if best is not None else None}

    def write_records() -> None:
        from ..results.plots import training_curves
        from ..utils import atomic_write

        write_log(rows, files.log)
        if figure:
            from ..models.weights import backbone_label

            on = backbone_label(str(meta.get("backbone", "?")), meta.get("weights_id"))
            title = f"{task.name}: {meta.get('explainer', task.name)} on {on}"
            atomic_write(files.plot, lambda tmp: training_curves(rows, tmp, title=title))

    for epoch in range(start_epoch, epochs):
        t0, c0 = time.perf_counter(), time.process_time()
        sampler.set_epoch(epoch)
        for ds in (train_set, val_set):
            if ds is not None and hasattr(ds, "set_epoch"):
                ds.set_epoch(epoch)
        task.train_mode()
        sums: Dict[str, Tensor] = {}
        count = torch.zeros((), device=device)
        bar = None
        it: Iterable = loader
        if progress and rank == 0:
            from tqdm.auto import tqdm

            bar = tqdm(loader, desc=f"epoch {epoch + 1}/{epochs}", leave=True, dynamic_ncols=True)
            it = bar
        lr = opt.param_groups[0]["lr"]
        steps: List[Dict[str, Tensor]] = []
        for step, (x, y) in enumerate(it):
            x = to_device(x, device)
            y = torch.as_tensor(y).to(device, non_blocking=True).long()
            loss, logs = task.loss(net, x, y)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite loss {float(loss)} at epoch {epoch + 1} "
                                         f"step {step}: {_fmt({k: float(v) for k, v in logs.items()})}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            b = y.shape[0]
            step_logs = {k: torch.as_tensor(v, device=device).detach().float()
                         for k, v in {"loss": loss.detach(), **logs}.items()}
            for k, v in step_logs.items():
                sums[k] = sums[k] + v * b if k in sums else v * b
            count += b
            if files is not None and rank == 0:
                steps.append(step_logs)
            if bar is not None and (step % 5 == 0 or step == len(loader) - 1):
                bar.set_postfix_str(_fmt({k: float(v / count) for k, v in sums.items()}))
        if bar is not None:
            bar.close()
        train_logs = _mean_logs(sums, count)
        if sched is not None:
            sched.step()
        val_logs: Dict[str, float] = {}
        if rank == 0 and val_loader is not None:
            task.eval_mode()
            val_logs = dict(task.evaluate(val_loader))
        history.append({"epoch": epoch + 1, "train": train_logs, "val": val_logs, "lr": lr,
                        "seconds": time.perf_counter() - t0,
                        "cpu_seconds": time.process_time() - c0})
        if rank == 0:
            improved = better(val_logs.get(metric), best["value"] if best else None, mode)
            if improved:
                best = {"metric": metric, "mode": mode, "value": float(val_logs[metric]),
                        "epoch": epoch + 1}
            log(f"epoch {epoch + 1}/{epochs} lr={lr:.3g} train: {_fmt(train_logs)}"
                + (f" | val: {_fmt(val_logs)}" if val_logs else "")
                + (" *best*" if improved else "")
                + f" ({history[-1]['seconds']:.1f}s)")
            if out is not None:
                ck = checkpoint(epoch + 1)
                save_checkpoint(ck, out)
                if files is not None and improved:
                    save_checkpoint(ck, files.best)
            if files is not None:
                first = len([r for r in rows if r.get("split") == "train"])
                if steps:
                    keys = list(steps[0])
                    vals = torch.stack([torch.stack([s[k] for k in keys]) for s in steps]).cpu()
                    for i, v in enumerate(vals.tolist()):
                        rows.append({"epoch": epoch + 1, "step": first + i + 1, "split": "train",
                                     "lr": lr, **dict(zip(keys, v))})
                if val_logs:
                    rows.append({"epoch": epoch + 1, "step": first + len(steps), "split": "val",
                                 "lr": lr, **val_logs})
                write_records()
        _barrier()
    final = checkpoint(history[-1]["epoch"] if history else start_epoch)
    final.pop("optimizer")
    final.pop("scheduler")
    return final
