"""EchoKV-lite on the real model, SmolLM2 (loaded offline from the installed wheel's GGUF file):
full mode bit-identical, compressed bytes at 2k tokens, compressed with every slot kept identical.
All marked slow (loading the model takes a while on CPU).
"""

import pytest
import torch

pytest.importorskip("transformers")

from echo_tutor.echokv import EchoKVCache, Reconstructor, attention_layout, select_slots  # noqa: E402
from echo_tutor.echokv.reconstructor import ReconstructorSpec  # noqa: E402

from echokv_fixtures import _two_phase, smol  # noqa: E402,F401  (smol: fixture)




@pytest.mark.slow
def test_smollm2_full_mode_bit_identical(smol):
    model, tok = smol
    lay = attention_layout(model)
    assert (lay.n_layers, lay.n_kv_heads, lay.n_q_heads, lay.head_dim) == (30, 3, 9, 64)
    for text in ("The capital of France is", "def fibonacci(n):\n    ", "Keys are easier to predict than"):
        ids = tok(text, return_tensors="pt").input_ids
        plain = model(ids, use_cache=False).logits
        got = model(ids, cache=EchoKVCache(model), use_cache=True).logits
        assert (plain - got).abs().max().item() == 0.0


@pytest.mark.slow
def test_smollm2_compressed_bytes_at_2k_tokens(smol):
    model, _ = smol
    kept = select_slots(layout=(30, 3), ratio=0.5, method="fixed")
    rec = Reconstructor(ReconstructorSpec(30, 3, 64, kept))
    cache = EchoKVCache(model, rec, "compressed")
    ids = torch.randint(0, 49152, (1, 2048), generator=torch.Generator().manual_seed(0))
    model(ids[:, :2040], cache=cache, use_cache=True)
    for t in range(2040, 2048):
        model(ids[:, t : t + 1], cache=cache, use_cache=True)
    assert cache.get_seq_length() == 2048
    frac = cache.nbytes / cache.full_nbytes
    assert abs(frac - rec.fraction_kept()) / rec.fraction_kept() < 0.02
    assert cache.full_nbytes == 2 * 30 * 3 * 2048 * 64 * 4


@pytest.mark.slow
def test_smollm2_compressed_with_every_slot_is_identical(smol):
    model, tok = smol
    kept = select_slots(layout=(30, 3), ratio=1.0, method="fixed")
    rec = Reconstructor(ReconstructorSpec(30, 3, 64, kept))
    ids = tok("The quick brown fox jumps over the lazy dog. " * 4, return_tensors="pt").input_ids
    full = _two_phase(model, EchoKVCache(model), ids, 20)
    comp = _two_phase(model, EchoKVCache(model, rec, "compressed"), ids, 20)
    assert (full - comp).abs().max().item() == 0.0
