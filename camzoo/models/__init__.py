"""Classifiers: the :class:`Backbone` type and :func:`capture` (:mod:`.backbone`), every
builder and name form (:mod:`.zoo`), surgery on copies (:mod:`.surgery`), and tiny models and
the synthetic known-answer task for tests (:mod:`.testing`, :mod:`.synthetic`)."""
from .backbone import Backbone, capture, freeze, hash_state_dict, hook_count, load_state_dict_file
from .zoo import (BACKBONE_LAYERS, BACKBONES, backbone_from_module, build_backbone,
                  imagenet_class_names, list_backbones, load_backbone)

__all__ = ["Backbone", "capture", "freeze", "hash_state_dict", "hook_count",
           "load_state_dict_file", "BACKBONE_LAYERS", "BACKBONES", "backbone_from_module",
           "build_backbone", "imagenet_class_names", "list_backbones", "load_backbone"]
