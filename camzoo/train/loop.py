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
factories), a progress display (a bar on a terminal, plain lines in a log) showing the running loss components, a checkpoint written
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
import functools
import hashlib
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import BatchSampler, DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler

from ..explainers.learned.checkpoint import CHECKPOINT_FORMAT, load_checkpoint, save_checkpoint
from ..progress import Progress
from ..utils import resolve_device
from ..version import __version__
from .records import RunFiles, better, read_log, run_files, write_log

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


# -- setting a run up ------------------------------------------------------------------------
def _per_rank_batch(batch_size: int, world: int) -> int:
    """Each of the ``world`` ranks' share of the global ``batch_size`` (which they must divide)."""
    if batch_size % world:
        raise ValueError(f"batch_size {batch_size} is not divisible by the {world} processes")
    return batch_size // world


def _training_device(task: TrainTask, device: Union[None, str, torch.device]) -> torch.device:
    """``device``; by default the device of the task's first parameter (CPU if it has none)."""
    if device is None:
        p = next(iter(task.modules().parameters()), None)
        device = p.device if p is not None else torch.device("cpu")
    return torch.device(device)


def _optimizer_and_scheduler(
        task: TrainTask, module: nn.Module, optimizer: OptimizerFactory,
        scheduler: Optional[SchedulerFactory]) -> Tuple[torch.optim.Optimizer, Any]:
    """The optimizer of ``module``'s parameters that require grad (an error if there are none)
    and its scheduler (None without a ``scheduler`` factory)."""
    params = [p for p in module.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"task {task.name!r} has no trainable parameters")
    opt = optimizer(params)
    sched = scheduler(opt) if scheduler is not None else None
    return opt, sched


def _run_metadata(task: TrainTask, train_set: Dataset, val_set: Optional[Dataset], *, seed: int,
                  world: int, batch_size: int) -> Dict[str, Any]:
    """A checkpoint's ``metadata``: the task's, plus the versions, seed, world size, global batch
    size and the data's manifest hashes and sizes (see the module docstring)."""
    meta = dict(task.metadata())
    meta.update(camzoo_version=__version__, torch_version=str(torch.__version__), seed=seed,
                world_size=world, batch_size=batch_size,
                data={"train_manifest": manifest_hash(train_set),
                      "val_manifest": manifest_hash(val_set),
                      "n_train": len(train_set),  # type: ignore[arg-type]
                      "n_val": len(val_set) if val_set is not None else 0})  # type: ignore[arg-type]
    return meta


def _check_resumable(ck: Dict[str, Any], task: TrainTask, meta: Dict[str, Any], out: str) -> None:
    """Refuse (ValueError) to resume from checkpoint ``ck`` (read from ``out``) when another
    task wrote it or its metadata differ from ``meta`` in one of ``task.identity_keys``."""
    if ck.get("task") != task.name:
        raise ValueError(f"cannot resume: {out} was trained by task {ck.get('task')!r}, "
                         f"this is {task.name!r}")
    bad = {k: (ck["metadata"].get(k), meta.get(k)) for k in task.identity_keys
           if ck["metadata"].get(k) != meta.get(k)}
    if bad:
        raise ValueError(f"cannot resume from {out}: it differs in " + "; ".join(
            f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in bad.items()))


def _remove_stale_records(files: RunFiles) -> None:
    """Delete the best checkpoint, log and curves an earlier run left beside ``files.last``
    (a run that starts at epoch 0 starts them over)."""
    for stale in (files.best, files.log, files.plot):
        if os.path.exists(stale):
            os.remove(stale)


def _ddp(module: nn.Module, device: torch.device, world: int) -> nn.Module:
    """What the task's ``loss`` calls as ``net``: ``module`` itself in one process, else a
    ``DistributedDataParallel`` wrapper around it (gradients averaged over the ranks)."""
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        return DDP(module, device_ids=[device.index] if device.type == "cuda" else None)
    return module


def _train_loader(train_set: Dataset, *, rank: int, world: int, seed: int, per_rank: int,
                  num_workers: int, device: torch.device) -> Tuple[DistributedSampler, DataLoader]:
    """The training sampler (a ``DistributedSampler`` in every case, shuffled by ``seed`` and
    the epoch) and loader of ``per_rank`` items, or of whole batches read by the dataset's
    ``get_batch`` when it has one."""
    sampler = DistributedSampler(train_set, num_replicas=world, rank=rank, shuffle=True,
                                 seed=seed, drop_last=False)
    pin = device.type == "cuda"
    if hasattr(train_set, "get_batch"):  # the dataset reads whole batches itself
        loader = DataLoader(_Batches(train_set), sampler=BatchSampler(sampler, per_rank, False),
                            batch_size=None, num_workers=num_workers, pin_memory=pin)
    else:
        loader = DataLoader(train_set, batch_size=per_rank, sampler=sampler,
                            num_workers=num_workers, pin_memory=pin, drop_last=False,
                            persistent_workers=False)
    return sampler, loader


def _val_loader(val_set: Optional[Dataset], batch_size: int, num_workers: int,
                device: torch.device) -> Optional[DataLoader]:
    """The held-out loader, in order; None without held-out items."""
    if val_set is None or len(val_set) == 0:  # type: ignore[arg-type]
        return None
    return DataLoader(val_set, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                      pin_memory=device.type == "cuda")


# -- what an epoch reports -------------------------------------------------------------------
class _LogSums:
    """One epoch's step logs summed on the device, each weighted by its batch size."""

    def __init__(self, device: torch.device) -> None:
        self.sums: Dict[str, Tensor] = {}
        self.count = torch.zeros((), device=device)

    def add(self, step_logs: Dict[str, Tensor], b: int) -> None:
        """Add one step's logs of a batch of ``b`` items."""
        for k, v in step_logs.items():
            self.sums[k] = self.sums[k] + v * b if k in self.sums else v * b
        self.count += b

    def running(self) -> str:
        """The running means so far, formatted for the progress bar (this rank only)."""
        return _fmt({k: float(v / self.count) for k, v in self.sums.items()})

    def mean(self) -> Dict[str, float]:
        """The epoch's means over every rank (a collective: all ranks call it)."""
        return _mean_logs(self.sums, self.count)


def _epoch_line(done: int, epochs: int, lr: float, train_logs: Dict[str, float],
                val_logs: Dict[str, float], improved: bool, seconds: float) -> str:
    """The summary line logged after epoch ``done`` (1-based) of ``epochs``."""
    return (f"epoch {done}/{epochs} lr={lr:.3g} train: {_fmt(train_logs)}"
            + (f" | val: {_fmt(val_logs)}" if val_logs else "")
            + (" *best*" if improved else "")
            + f" ({seconds:.1f}s)")


def _log_rows(done: int, lr: float, first: int, steps: List[Dict[str, Tensor]],
              val_logs: Dict[str, float]) -> List[Dict[str, Any]]:
    """Epoch ``done``'s rows of the per-step log: one ``train`` row per step of ``steps``
    (numbered on after the ``first`` earlier training rows), then a ``val`` row of
    ``val_logs`` if there are any (numbered as the epoch's last step)."""
    rows: List[Dict[str, Any]] = []
    if steps:
        keys = list(steps[0])
        vals = torch.stack([torch.stack([s[k] for k in keys]) for s in steps]).cpu()
        for i, v in enumerate(vals.tolist()):
            rows.append({"epoch": done, "step": first + i + 1, "split": "train", "lr": lr,
                         **dict(zip(keys, v))})
    if val_logs:
        rows.append({"epoch": done, "step": first + len(steps), "split": "val", "lr": lr,
                     **val_logs})
    return rows


# -- the loop -------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Settings:
    """What a :func:`fit` call fixes for the whole run (see its arguments)."""

    epochs: int
    batch_size: int  # global
    per_rank: int
    seed: int
    num_workers: int
    progress: bool
    eval_batch_size: Optional[int]
    log: Callable[[str], None]
    figure: bool
    out: Optional[str]
    files: Optional[RunFiles]  # None: no records beside the checkpoint
    metric: str  # of the best checkpoint
    mode: str
    rank: int
    world: int
    device: torch.device


class _Run:
    """One :func:`fit` run: its state and the steps that change it, one per method.

    State: the trainable ``module`` and ``net`` (the module or its DDP wrapper), ``opt``,
    ``sched``, ``meta``; what a resume restores (``start_epoch``, ``history``, ``best``, and
    ``rows``, the per-step log, kept by rank 0); the loaders. :func:`fit` calls
    :meth:`resume_or_start`, :meth:`prepare`, :meth:`epoch` for every remaining epoch and
    :meth:`result`. Only rank 0 evaluates, logs and writes files.
    """

    def __init__(self, task: TrainTask, module: nn.Module, train_set: Dataset,
                 val_set: Optional[Dataset], settings: _Settings, opt: torch.optim.Optimizer,
                 sched: Any, meta: Dict[str, Any]) -> None:
        self.task, self.module = task, module
        self.train_set, self.val_set = train_set, val_set
        self.s = settings
        self.opt, self.sched, self.meta = opt, sched, meta
        self.start_epoch = 0
        self.history: List[Dict[str, Any]] = []
        self.best: Optional[Dict[str, Any]] = None
        self.rows: List[Dict[str, Any]] = []
        self.net: nn.Module = module
        self.sampler: DistributedSampler  # these three: set by prepare()
        self.loader: DataLoader
        self.val_loader: Optional[DataLoader] = None

    # -- before the first epoch ---------------------------------------------------------------
    def resume_or_start(self, resume: bool, overwrite: bool) -> None:
        """Continue an existing checkpoint ``out`` (``resume``), refuse to replace it (neither
        ``resume`` nor ``overwrite``), or start over; a run starting at epoch 0 removes the
        records an earlier run left."""
        out = self.s.out
        if out is not None and os.path.exists(out):
            if resume:
                self._resume(load_checkpoint(out))
            elif not overwrite:
                raise FileExistsError(f"{out} exists; pass resume=True (--resume) to continue it "
                                      f"or overwrite=True (--overwrite) to start over")
        if self.s.files is not None and self.start_epoch == 0 and self.s.rank == 0:
            _remove_stale_records(self.s.files)

    def _resume(self, ck: Dict[str, Any]) -> None:
        """Restore weights, optimizer, scheduler, epoch, history, best and log rows from ``ck``."""
        _check_resumable(ck, self.task, self.meta, self.s.out)  # type: ignore[arg-type]
        self.module.load_state_dict(ck["state_dict"])
        self.opt.load_state_dict(ck["optimizer"])
        if self.sched is not None and ck.get("scheduler") is not None:
            self.sched.load_state_dict(ck["scheduler"])
        self.start_epoch, self.history = int(ck["epoch"]), list(ck.get("history", []))
        self.best = ck.get("best")
        if self.s.files is not None:
            self.rows = read_log(self.s.files.log, upto_epoch=self.start_epoch)
        if self.s.rank == 0:
            self.s.log(f"resuming {self.s.out} after epoch {self.start_epoch}/{self.s.epochs}")

    def prepare(self) -> None:
        """The DDP wrapper (several processes) and the training and held-out loaders."""
        s = self.s
        self.net = _ddp(self.module, s.device, s.world)
        self.sampler, self.loader = _train_loader(
            self.train_set, rank=s.rank, world=s.world, seed=s.seed, per_rank=s.per_rank,
            num_workers=s.num_workers, device=s.device)
        self.val_loader = _val_loader(self.val_set, s.eval_batch_size or s.batch_size,
                                      s.num_workers, s.device)

    # -- one epoch ----------------------------------------------------------------------------
    def epoch(self, epoch: int) -> None:
        """Epoch ``epoch`` (0-based): train, step the scheduler, evaluate, add it to the
        history, then (rank 0) the best rule, the log line, checkpoints and records; all ranks
        wait for rank 0 at the end."""
        t0, c0 = time.perf_counter(), time.process_time()
        self._set_epoch(epoch)
        train_logs, lr, steps = self._train_epoch(epoch)
        if self.sched is not None:
            self.sched.step()
        val_logs = self._validate()
        self.history.append({"epoch": epoch + 1, "train": train_logs, "val": val_logs, "lr": lr,
                             "seconds": time.perf_counter() - t0,
                             "cpu_seconds": time.process_time() - c0})
        if self.s.rank == 0:
            self._finish_epoch(epoch + 1, lr, train_logs, val_logs, steps)
        _barrier()

    def _set_epoch(self, epoch: int) -> None:
        """Tell the sampler and the datasets that have ``set_epoch`` which epoch begins."""
        self.sampler.set_epoch(epoch)
        for ds in (self.train_set, self.val_set):
            if ds is not None and hasattr(ds, "set_epoch"):
                ds.set_epoch(epoch)  # type: ignore[attr-defined]

    def _train_epoch(self, epoch: int) -> Tuple[Dict[str, float], float, List[Dict[str, Tensor]]]:
        """One pass over the training loader in train mode. Returns the epoch's mean logs
        (over all ranks), the learning rate it ran with, and each step's logs (kept by rank 0
        when the run writes records, else ``[]``)."""
        self.task.train_mode()
        sums = _LogSums(self.s.device)
        bar = self._progress_bar(epoch)
        lr = self.opt.param_groups[0]["lr"]
        steps: List[Dict[str, Tensor]] = []
        keep = self.s.files is not None and self.s.rank == 0
        for step, (x, y) in enumerate(self.loader):
            step_logs, b = self._step(epoch, step, x, y)
            sums.add(step_logs, b)
            if keep:
                steps.append(step_logs)
            if bar is not None:
                if step % 5 == 0 or step == len(self.loader) - 1:
                    bar.describe(bar.desc, sums.running())
                bar.update(1)
        if bar is not None:
            bar.close()
        return sums.mean(), lr, steps

    def _progress_bar(self, epoch: int) -> Optional[Progress]:
        """The epoch's progress over the training loader's steps (rank 0 with ``progress``; a
        bar on a terminal, plain lines in a log), else None."""
        if not (self.s.progress and self.s.rank == 0):
            return None
        return Progress(len(self.loader), f"epoch {epoch + 1}/{self.s.epochs}", unit="step")

    def _step(self, epoch: int, step: int, x: Any, y: Any) -> Tuple[Dict[str, Tensor], int]:
        """One optimizer step on batch ``(x, y)``; an error on a non-finite loss. Returns the
        step's logs (``loss`` and the task's terms, float32 0-dim tensors on the device) and
        the batch size."""
        device = self.s.device
        x = to_device(x, device)
        y = torch.as_tensor(y).to(device, non_blocking=True).long()
        loss, logs = self.task.loss(self.net, x, y)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss {float(loss)} at epoch {epoch + 1} "
                                     f"step {step}: {_fmt({k: float(v) for k, v in logs.items()})}")
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        step_logs = {k: torch.as_tensor(v, device=device).detach().float()
                     for k, v in {"loss": loss.detach(), **logs}.items()}
        return step_logs, y.shape[0]

    def _validate(self) -> Dict[str, float]:
        """The task's held-out metrics, in eval mode (rank 0 with held-out data; else ``{}``)."""
        if self.s.rank != 0 or self.val_loader is None:
            return {}
        self.task.eval_mode()
        return dict(self.task.evaluate(self.val_loader))

    # -- after an epoch (rank 0) --------------------------------------------------------------
    def _finish_epoch(self, done: int, lr: float, train_logs: Dict[str, float],
                      val_logs: Dict[str, float], steps: List[Dict[str, Tensor]]) -> None:
        """After epoch ``done`` (1-based): the best rule, the log line, the checkpoints, and
        the per-step log and curves."""
        improved = self._update_best(done, val_logs)
        self.s.log(_epoch_line(done, self.s.epochs, lr, train_logs, val_logs, improved,
                               self.history[-1]["seconds"]))
        self._save(done, improved)
        if self.s.files is not None:
            first = len([r for r in self.rows if r.get("split") == "train"])
            self.rows.extend(_log_rows(done, lr, first, steps, val_logs))
            self._write_records()

    def _update_best(self, done: int, val_logs: Dict[str, float]) -> bool:
        """Make epoch ``done`` the best if its held-out metric is strictly better than the best
        so far (:func:`camzoo.train.records.better`); returns whether it is."""
        metric, mode = self.s.metric, self.s.mode
        best = self.best["value"] if self.best else None
        improved = better(val_logs.get(metric), best, mode)  # type: ignore[arg-type]
        if improved:
            self.best = {"metric": metric, "mode": mode, "value": float(val_logs[metric]),
                         "epoch": done}
        return improved

    def _save(self, done: int, improved: bool) -> None:
        """Write the checkpoint after epoch ``done`` to ``out``, and to ``NAME.best.pt`` too when
        it is the best so far (with records)."""
        if self.s.out is None:
            return
        ck = self.checkpoint(done)
        save_checkpoint(ck, self.s.out)
        if self.s.files is not None and improved:
            save_checkpoint(ck, self.s.files.best)

    def _write_records(self) -> None:
        """Rewrite the per-step log and (with ``figure``) redraw its curves."""
        from ..results.plots import training_curves
        from ..utils import atomic_write

        files = self.s.files
        write_log(self.rows, files.log)  # type: ignore[union-attr]
        if self.s.figure:
            from ..models.weights import backbone_label

            meta = self.meta
            on = backbone_label(str(meta.get("backbone", "?")), meta.get("weights_id"))
            title = f"{self.task.name}: {meta.get('explainer', self.task.name)} on {on}"
            atomic_write(files.plot,  # type: ignore[union-attr]
                         functools.partial(training_curves, self.rows, title=title))

    # -- checkpoints --------------------------------------------------------------------------
    def checkpoint(self, epoch: int) -> Dict[str, Any]:
        """The checkpoint dict after ``epoch`` completed epochs (format: the module docstring)."""
        return {"format": CHECKPOINT_FORMAT, "task": self.task.name,
                "state_dict": {k: v.detach().cpu() for k, v in self.module.state_dict().items()},
                "optimizer": self.opt.state_dict(),
                "scheduler": self.sched.state_dict() if self.sched is not None else None,
                "epoch": epoch, "epochs": self.s.epochs, "metadata": self.meta,
                "history": list(self.history),
                "best": dict(self.best) if self.best is not None else None}

    def result(self) -> Dict[str, Any]:
        """:func:`fit`'s return value: the last checkpoint without optimizer / scheduler."""
        final = self.checkpoint(self.history[-1]["epoch"] if self.history else self.start_epoch)
        final.pop("optimizer")
        final.pop("scheduler")
        return final


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
        progress: show the progress of each epoch (rank 0 only; a bar on a terminal, plain lines
            in a log).
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

    (Longer than 60 lines only through its signature and this documentation: the body sets
    the run up in the order that fixes its errors and random streams, and ``_Run`` does the
    rest, one step per method.)
    """
    rank, world = rank_and_world()
    per_rank = _per_rank_batch(batch_size, world)
    device = _training_device(task, device)
    task.to(device)
    module = task.modules()
    opt, sched = _optimizer_and_scheduler(task, module, optimizer, scheduler)
    meta = _run_metadata(task, train_set, val_set, seed=seed, world=world, batch_size=batch_size)
    metric, mode = best_metric or task.best_metric
    better(0.0, None, mode)  # validates mode
    out = os.fspath(out) if out is not None else None
    settings = _Settings(
        epochs=epochs, batch_size=batch_size, per_rank=per_rank, seed=seed,
        num_workers=num_workers, progress=progress, eval_batch_size=eval_batch_size, log=log,
        figure=figure, out=out, files=run_files(out) if out is not None and records else None,
        metric=metric, mode=mode, rank=rank, world=world, device=device)
    run = _Run(task, module, train_set, val_set, settings, opt, sched, meta)
    run.resume_or_start(resume, overwrite)
    run.prepare()
    for epoch in range(run.start_epoch, epochs):
        run.epoch(epoch)
    return run.result()
