"""Small trained models shipped with the package, and the results files the labs read.

``echo_tutor.pretrained("echo")`` loads a model trained by ``scripts/train_checkpoints.sh`` (the exact
commands are recorded in the ``.json`` beside each ``.pt``, with its training history). Weights are
stored as float16 and loaded as float32.
"""

import sys
import types

from .store import HERE, available, info, load_pretrained, path_of, results

__all__ = ["HERE", "load_pretrained", "available", "info", "results", "path_of"]


class _CallableModule(types.ModuleType):
    """``echo_tutor.pretrained("echo")`` loads a model; ``echo_tutor.pretrained.info("echo")`` and the other
    functions stay reachable as attributes (the package used to bind the name to the function, which hid them)."""

    def __call__(self, name: str, *args, **kwargs):
        return load_pretrained(name, *args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
