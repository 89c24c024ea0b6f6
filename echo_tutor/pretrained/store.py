"""Find, load and describe the shipped models and results files (stored beside this module), and make the package
callable: ``echo_tutor.pretrained("echo")`` loads a model."""

from __future__ import annotations

import json
import pathlib
import sys
import types
from typing import Any

from ..errors import BadArgumentError
from ..models import load

__all__ = ["HERE", "load_pretrained", "available", "info", "results", "path_of"]

HERE = pathlib.Path(__file__).resolve().parent


def _file(name: str) -> str:
    return name.replace("+", "_")



def available() -> list[str]:
    """Names of the shipped models (e.g. ``['echo', 'ssm', 'ssm+attn', 'ssm+ridge']``).

    A shipped model is a ``.pt`` checkpoint with its model card (``.json``) beside it; other ``.pt`` files here
    (lab 08's converted SmolLM2 mixers, ``convert_mixers.pt``) are not models and are not listed.
    """
    return sorted(p.stem.replace("_", "+") for p in HERE.glob("*.pt") if p.with_suffix(".json").exists())



def path_of(name: str) -> pathlib.Path:
    p = HERE / f"{_file(name)}.pt"
    if not p.exists():
        have = available()
        raise BadArgumentError(f"name must be one of the shipped models {have}, got {name!r}"
                         + ("" if have else " (none shipped yet: run scripts/train_checkpoints.sh)"))
    return p



def load_pretrained(name: str):
    """The shipped model ``name`` (a ``HybridLM`` in eval mode, float32, on the CPU)."""

    return load(path_of(name))



def info(name: str) -> dict[str, Any]:
    """How the shipped model was trained: command, steps, time, evaluation history."""
    return json.loads(path_of(name).with_suffix(".json").read_text())



def results(kind: str) -> Any:
    """A shipped results file, e.g. ``results("cliff")`` -> the records of ``echo-tutor cliff``."""
    p = HERE / f"results_{kind}.json"
    if not p.exists():
        raise BadArgumentError(f"kind: no shipped results_{kind}.json (have: {[q.stem for q in HERE.glob('results_*.json')]})")
    return json.loads(p.read_text())


class _CallableModule(types.ModuleType):
    """``echo_tutor.pretrained("echo")`` loads a model; ``echo_tutor.pretrained.info("echo")`` and the other
    functions stay reachable as attributes (the package used to bind the name to the function, which hid them)."""

    def __call__(self, name: str, *args, **kwargs):
        return load_pretrained(name, *args, **kwargs)


# the package (``echo_tutor.pretrained``, being imported: its ``__init__`` imports this module) becomes callable
sys.modules[__package__].__class__ = _CallableModule
