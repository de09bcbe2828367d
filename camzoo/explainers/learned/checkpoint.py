"""Checkpoints of learned explainers: the file format written by :func:`camzoo.train.fit`,
reading it safely, and checking that a checkpoint fits the backbone it is used with.

Format (``torch.save`` of a dict, read with ``weights_only=True``)::

    {"format": "camzoo.train/1", "task": "lcam" | "lficam", "state_dict": ...,
     "optimizer": ..., "scheduler": ... or None, "epoch": int, "epochs": int,
     "metadata": {...}, "history": [...]}

The training side (:mod:`camzoo.train`) writes it; the explainers read it. Training imports
this module, never the reverse.
"""
from __future__ import annotations

import os
from typing import Any, Dict, List, Mapping, Union

import torch

from ...utils import atomic_write, load_torch_file

CHECKPOINT_FORMAT = "camzoo.train/1"


def save_checkpoint(obj: Dict[str, Any], path: Union[str, os.PathLike]) -> None:
    """``torch.save`` to ``path`` atomically (temporary file + rename)."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def load_checkpoint(path: Union[str, os.PathLike], map_location: Any = "cpu") -> Dict[str, Any]:
    """Load a checkpoint written by :func:`camzoo.train.fit` (``weights_only=True``); clear
    errors when the file is missing or is not a camzoo training checkpoint."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    ck = load_torch_file(path, "checkpoint")
    if map_location not in (None, "cpu"):
        ck = _to(ck, map_location)
    if not isinstance(ck, dict) or ck.get("format") != CHECKPOINT_FORMAT:
        got = ck.get("format") if isinstance(ck, dict) else type(ck).__name__
        raise ValueError(f"{path} is not a camzoo training checkpoint (expected format "
                         f"{CHECKPOINT_FORMAT!r}; got {got!r})")
    return ck


def _to(obj: Any, device: Any) -> Any:
    if torch.is_tensor(obj):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: _to(v, device) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to(v, device) for v in obj]
    return obj


def load_task_checkpoint(path: Union[str, os.PathLike], task: str, hint: str) -> Dict[str, Any]:
    """:func:`load_checkpoint`, refusing a checkpoint of another training task.

    Args:
        path: the checkpoint file.
        task: the expected ``"task"`` (``"lcam"``, ``"lficam"``).
        hint: what the message suggests (e.g. ``"train one with `camzoo train lcam`"``).
    """
    ck = load_checkpoint(path)
    if ck.get("task") != task:
        raise ValueError(f"{path} is a {ck.get('task')!r} checkpoint, not {task!r} ({hint})")
    return ck


def mismatches(meta: Mapping[str, Any], want: Mapping[str, Any]) -> List[str]:
    """``"key: checkpoint A, here B"`` for every key of ``want`` whose value differs in ``meta``."""
    return [f"{k}: checkpoint {meta.get(k)!r}, here {v!r}" for k, v in want.items()
            if meta.get(k) != v]


def file_key(path: Union[str, os.PathLike]) -> tuple:
    """``(absolute path, mtime)``: identifies a checkpoint file's content for caches."""
    path = os.fspath(path)
    return os.path.abspath(path), os.path.getmtime(path) if os.path.exists(path) else 0.0
