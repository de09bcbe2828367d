"""Pretrained weights the way their owners ship them, and the rule that random weights are asked for.

- torchvision backbones: torchvision's weights API (``ResNet50_Weights.IMAGENET1K_V1``...).
  The file is cached where torchvision caches it (``torch.hub.get_dir()/checkpoints``, i.e.
  ``$TORCH_HOME/hub/checkpoints``) and downloaded with torch's progress bar when missing,
  hash-checked against the hash in its file name, exactly as ``torchvision.models.vgg16(
  weights=...)`` would. :data:`TORCHVISION_DEFAULT` is the tag used without ``weights``.
- ``timm:<model>``: timm's own pretrained loading (its Hugging Face hub cache, ``hf-hub:org/name``
  names, and ``pretrained_cfg_overlay=dict(file=...)`` for a local file), see
  :func:`create_timm_model`.
- Random weights only when asked: ``weights="random"`` (CLI ``--weights random``). A backbone
  says its weights are random through its ``weights_id`` (:func:`is_random`); the zoo refuses a
  random backbone built without ``weights="random"`` (:func:`check_not_random`), and every
  output that names the backbone marks it (:func:`backbone_label`).
"""
from __future__ import annotations

import os
import urllib.parse
from typing import Any, Dict, Optional, Tuple

import torch
from torch import Tensor, nn

RANDOM = "random"
#: the torchvision weights the papers used (L-CAM Table 1: torchvision's original ImageNet
#: weights, "pretrained models from the PyTorch model zoo"); ``--weights IMAGENET1K_V2`` or
#: ``DEFAULT`` picks another tag of the same weights enum
TORCHVISION_DEFAULT = "IMAGENET1K_V1"
#: how tables, figures and messages mark a backbone with random weights
RANDOM_MARK = "random weights"


def is_random(weights_id: Optional[str]) -> bool:
    """True when a backbone's ``weights_id`` says its weights are random (untrained)."""
    return str(weights_id or "").startswith(RANDOM)


def backbone_label(name: str, weights_id: Optional[str]) -> str:
    """``name``, or ``"name (random weights)"`` when ``weights_id`` is random."""
    return f"{name} ({RANDOM_MARK})" if is_random(weights_id) else name


def check_not_random(name: str, weights: Any, weights_id: str) -> None:
    """Refuse a backbone whose weights are random unless ``weights == "random"`` asked for them.

    Raises:
        ValueError: naming the backbone and how to ask for random weights.
    """
    if is_random(weights_id) and weights != RANDOM:
        raise ValueError(
            f"backbone {name!r} has random (untrained) weights, and explanations of an untrained "
            "network mean nothing; give its weights (--weights FILE), or pass --weights random "
            "(weights='random') to run it on random weights anyway, e.g. as a smoke test")


def hub_cache_file(url: str) -> str:
    """Where torch hub (and so torchvision) caches the file of ``url``."""
    name = os.path.basename(urllib.parse.urlparse(url).path)
    return os.path.join(torch.hub.get_dir(), "checkpoints", name)


def download_state_dict(url: str, what: str) -> Dict[str, Tensor]:
    """The state dict at ``url`` through torch hub's cache (downloaded with a progress bar and
    hash-checked when missing; ``weights_only`` loading), as torchvision's ``get_state_dict``.

    Raises:
        FileNotFoundError: the download or the load failed; the message names the URL, the
            cache file to place by hand and the error.
    """
    path = hub_cache_file(url)
    try:
        return torch.hub.load_state_dict_from_url(url, model_dir=os.path.dirname(path), map_location="cpu",
                                                  progress=True, check_hash=True, weights_only=True)
    except Exception as exc:  # URLError, HTTPError, a hash mismatch, a damaged cached file
        raise FileNotFoundError(
            f"cannot get the weights of {what} from {url} ({type(exc).__name__}: {exc}). Download "
            f"that file by other means and place it at {path}, or pass --weights FILE") from None


def torchvision_state_dict(arch: str, enum_cls: Any, weights: Any
                           ) -> Tuple[Optional[Dict[str, Tensor]], str, Any]:
    """``(state_dict or None for random, weights_id, weights enum member)`` of a torchvision model.

    Args:
        arch: the torchvision builder's name (``"vgg16"``), for messages.
        enum_cls: its weights enum (``torchvision.models.VGG16_Weights``).
        weights: ``None`` (:data:`TORCHVISION_DEFAULT`), a tag of ``enum_cls``
            (``"IMAGENET1K_V2"``, ``"DEFAULT"``), a state_dict file, or ``"random"``.
    The member gives the preprocessing (a file or random weights get the default's).
    """
    from .backbone import hash_state_dict, load_state_dict_file

    tags = list(enum_cls.__members__)
    if weights == RANDOM:
        return None, RANDOM, enum_cls[TORCHVISION_DEFAULT]
    tag = TORCHVISION_DEFAULT if weights is None else str(weights)
    if tag in tags:
        member = enum_cls[tag]
        if not member.meta.get("categories"):
            raise ValueError(f"--weights {tag}: {enum_cls.__name__}.{member.name} holds no ImageNet "
                             f"classifier (a feature extractor); choose one of {', '.join(tags)} with one")
        sd = download_state_dict(member.url, f"{arch} ({enum_cls.__name__}.{member.name})")
        fname = os.path.basename(hub_cache_file(member.url))
        # the default keeps the id runs stored before weights tags existed
        src = f"torchvision:{fname}" if tag == TORCHVISION_DEFAULT else f"torchvision:{member.name}:{fname}"
        return sd, f"{src}#{hash_state_dict(sd)}", member
    if not os.path.isfile(os.fspath(weights)):
        raise FileNotFoundError(
            f"--weights {weights!r} for {arch}: no such file, and not a weights tag of torchvision's "
            f"{enum_cls.__name__} ({', '.join(tags)}), nor 'random'")
    sd = load_state_dict_file(weights)
    return sd, f"file:{os.path.basename(os.fspath(weights))}#{hash_state_dict(sd)}", enum_cls[TORCHVISION_DEFAULT]


def timm_has_pretrained(model_name: str) -> bool:
    """True when timm knows pretrained weights for ``model_name`` (``arch`` or ``arch.tag``);
    ``hf-hub:`` names are the hub's, so True."""
    if model_name.startswith("hf-hub:"):
        return True
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(model_name)
    return bool(cfg is not None and (cfg.hf_hub_id or cfg.url or cfg.file or cfg.state_dict))


def create_timm_model(model_name: str, weights: Any, **kwargs) -> Tuple[nn.Module, str]:
    """``(model, weights_id)`` of ``timm:<model_name>`` through timm's own loading.

    Args:
        model_name: a timm name (``resnet18``, ``resnet18.a1_in1k``, ``hf-hub:org/name``).
        weights: ``None``: timm's pretrained weights (its hub cache, downloaded when missing);
            a file: loaded by timm (``pretrained_cfg_overlay=dict(file=...)``, its checkpoint
            filters and safetensors support included); ``"random"``: random init.
        kwargs: model arguments (``num_classes``, ``img_size``...).
    Raises:
        ValueError: an unknown model, a model without pretrained weights (unless ``random``), or
            weights that do not fit. FileNotFoundError: the weights are neither cached nor
            downloadable (the message names the hub id and the cache).
    """
    import timm

    from .backbone import hash_state_dict

    def create(**kw) -> nn.Module:
        try:
            return timm.create_model(model_name, **kw, **kwargs)
        except RuntimeError as exc:
            if "Unknown model" in str(exc):
                raise ValueError(f"unknown timm model {model_name!r}: {exc}") from None
            raise

    if weights == RANDOM:
        return create(pretrained=False), RANDOM
    if weights is not None:
        path = os.path.abspath(os.fspath(weights))
        if not os.path.isfile(path):
            raise FileNotFoundError(f"weights file not found: {path}")
        overlay = {"file": path, "num_classes": kwargs.get("num_classes", 1000)}
        try:
            model = create(pretrained=True, pretrained_cfg_overlay=overlay)
        except (RuntimeError, KeyError, ValueError) as exc:
            raise ValueError(f"weights {path} do not fit timm:{model_name} ({type(exc).__name__}: "
                             f"{str(exc)[:500]})") from None
        return model, f"file:{os.path.basename(path)}#{hash_state_dict(model.state_dict())}"
    if not timm_has_pretrained(model_name):
        raise ValueError(f"timm model {model_name!r} has no pretrained weights in timm "
                         f"({', '.join(timm.list_pretrained(model_name.split('.')[0] + '.*')[:5]) or 'no tags'}); "
                         "pass --weights FILE, or --weights random for a smoke test")
    try:
        model = create(pretrained=True)
    except ValueError:
        raise
    except Exception as exc:  # hub errors: offline, not cached, gated, no such repo
        from huggingface_hub import constants

        where = model_name[len("hf-hub:"):] if model_name.startswith("hf-hub:") else _timm_source(model_name)
        raise FileNotFoundError(
            f"cannot get timm's pretrained weights of {model_name!r} ({where}): "
            f"{type(exc).__name__}: {str(exc)[:300]}. They are read from the Hugging Face hub cache "
            f"{constants.HF_HUB_CACHE} (set HF_HOME or HF_HUB_CACHE to use another) and downloaded "
            "when missing; place them there, or pass --weights FILE") from None
    tag = getattr(model, "pretrained_cfg", {}) or {}
    src = tag.get("hf_hub_id") or tag.get("url") or model_name
    return model, f"timm:{src}#{hash_state_dict(model.state_dict())}"


def _timm_source(model_name: str) -> str:
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(model_name)
    if cfg is None:
        return "no pretrained config"
    return f"hub {cfg.hf_hub_id}" if cfg.hf_hub_id else f"url {cfg.url}"
