"""Small trained models shipped with the package, and the results files the labs read.

``echo_tutor.pretrained("echo")`` loads a model trained by ``scripts/train_checkpoints.sh`` (the exact
commands are recorded in the ``.json`` beside each ``.pt``, with its training history). Weights are
stored as float16 and loaded as float32. (:mod:`.store` makes this package callable.)
"""

from .store import HERE, available, info, load_pretrained, path_of, results

__all__ = ["HERE", "load_pretrained", "available", "info", "results", "path_of"]

