import pytest
import torch

from conftest import assert_close, scan_steps
from echo_tutor.models import MIXERS, PRESETS, HybridLM, build, count_parameters, load, state_nbytes

PAPER_PARAMS = {"synth1m-ssm": 1_110_000, "synth1m-ssm+attn": 998_000, "synth1m-echo": 982_000}


@pytest.mark.parametrize("preset", list(PAPER_PARAMS))
def test_preset_sizes_match_the_paper(preset):
    n = count_parameters(build(preset, vocab_size=128))
    assert abs(n - PAPER_PARAMS[preset]) / PAPER_PARAMS[preset] < 0.10, n


def ska_mixers(model):
    return [b.mixer for b, n in zip(model.blocks, model.layout) if n == "ska"]


def test_ssm_ridge_is_echo_with_k0():
    assert [s.power_steps for s in ska_mixers(build("synth1m-ssm+ridge"))] == [0, 0]
    assert [s.power_steps for s in ska_mixers(build("synth1m-echo"))] == [2, 2]
    assert build("synth1m-echo").layout == ["mamba2", "mamba2", "ska", "ska"]
    assert build("synth1m-echo", ska_rank=8).blocks[2].mixer.rank == 8


def test_every_preset_name_means_one_model():
    from echo_tutor.models import LAB_PRESETS, scale_of

    assert not set(PRESETS) & set(LAB_PRESETS) and all(p.startswith("synth1m-") for p in PRESETS)
    assert scale_of("echo") == "lab" and scale_of("synth1m-echo") == "synth1m"
    assert build("echo").config.d_model == 64 and build("synth1m-echo").config.d_model == 128
    with pytest.raises(ValueError, match="'echo' is a lab-scale preset, not scale='synth1m'"):
        build("echo", scale="synth1m")
    with pytest.raises(ValueError, match="preset must be one of the lab-scale presets"):
        build("attn")


def small(preset, **kw):
    torch.manual_seed(0)
    m = build(preset, vocab_size=50, d_model=32, n_heads=4, d_state=8, ska_rank=6,
              mixer_kwargs={"ska": {"mode": "token", "chunk_size": 8}, "mamba2": {"chunk_size": 8}}, **kw).double()
    for b, n in zip(m.blocks, m.layout):  # SKA's zero-init output would hide it from every comparison
        if n == "ska":
            torch.nn.init.normal_(b.mixer.w_o.weight, std=0.2)
    return m


@pytest.mark.parametrize("preset", list(PRESETS))
def test_model_step_equals_forward(preset):
    m = small(preset)
    ids = torch.randint(0, 50, (2, 21), generator=torch.Generator().manual_seed(1))
    logits, _ = m(ids)
    outs, _ = scan_steps(m, ids, m.init_state(2))
    assert_close("logits", logits, outs)


@pytest.mark.parametrize("preset", list(PRESETS))
def test_model_is_causal(preset):
    m = small(preset)
    ids = torch.randint(0, 50, (2, 30), generator=torch.Generator().manual_seed(2))
    ids2 = ids.clone()
    ids2[:, 18:] = (ids2[:, 18:] + 1) % 50
    assert_close("prefix", m(ids)[0][:, :18], m(ids2)[0][:, :18], 1e-12)


@pytest.mark.parametrize("mixer", MIXERS)
def test_every_mixer_is_causal_in_chunk_training_mode(mixer):
    torch.manual_seed(3)
    m = HybridLM(HybridConfig(40, d_model=32, layout=mixer, n_heads=4, d_state=8, ska_rank=6,
                 mixer_kwargs={"ska": {"chunk_size": 8}} if mixer == "ska" else None)).double()
    ids = torch.randint(0, 40, (1, 33))
    ids2 = ids.clone()
    ids2[:, 20:] = (ids2[:, 20:] + 3) % 40
    assert_close("prefix", m(ids)[0][:, :20], m(ids2)[0][:, :20], 1e-12)


def test_state_bytes_constant_for_ssm_and_echo_linear_for_attention():
    sizes = {}
    for preset in ("synth1m-ssm", "synth1m-echo", "synth1m-attn"):
        m = build(preset, vocab_size=64, d_model=32, n_heads=4, d_state=8, ska_rank=6)
        sizes[preset] = []
        for T in (16, 64, 256):
            _, st = m(torch.randint(0, 64, (1, T)))
            sizes[preset].append(state_nbytes(st))
    assert len(set(sizes["synth1m-ssm"])) == 1 and len(set(sizes["synth1m-echo"])) == 1
    a = sizes["synth1m-attn"]
    assert a[1] == 4 * a[0] and a[2] == 16 * a[0]


def test_save_and_load_roundtrip(tmp_path):
    m = small("synth1m-echo")
    path = tmp_path / "m.pt"
    m.float().save(path)
    m2 = load(path)
    assert m2.config == m.config
    ids = torch.randint(0, 50, (1, 12))
    assert torch.equal(m.float()(ids)[0], m2(ids)[0])
    (tmp_path / "junk.pt").write_bytes(b"")
    torch.save({"x": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not an echo_tutor HybridLM checkpoint"):
        load(tmp_path / "other.pt")


def test_bad_layouts_and_inputs():
    with pytest.raises(ValueError, match="unknown mixer name"):
        HybridLM(HybridConfig(32, layout="mamba2,transformer"))
    with pytest.raises(ValueError, match="at least one mixer"):
        HybridLM(HybridConfig(32, layout=""))
    with pytest.raises(ValueError, match="preset must be one of"):
        build("mamba")
    with pytest.raises(ValueError, match="mixer_kwargs: unknown"):
        HybridLM(HybridConfig(32, mixer_kwargs={"ssm": {}}))
    with pytest.raises(ValueError, match="n_heads=3 must divide"):
        HybridLM(HybridConfig(32, d_model=32, n_heads=3))
    m = build("synth1m-echo", vocab_size=32, d_model=32, n_heads=4, d_state=8, ska_rank=6)
    with pytest.raises(ValueError, match=r"token ids in \[0, 32\)"):
        m(torch.tensor([[1, 40]]))
    with pytest.raises(ValueError, match="integer token ids"):
        m(torch.rand(1, 4))
    with pytest.raises(ValueError, match="ids must have 2 dims"):
        m(torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="state must be the list"):
        m.step(torch.tensor([1]), None)


def test_prefix_mask_from_labels_and_passed_to_ska():
    from echo_tutor.models import prefix_mask
    from echo_tutor.tasks import mqar_gap

    x, y = mqar_gap(32, 3, 5, 2, seed=0)
    w = prefix_mask(y)
    q0 = 6 + 5  # first query key
    assert torch.equal(w[:, : q0 - 1], torch.ones(2, q0 - 1)) and (w[:, q0 - 1:] == 0).all()
    m = small("synth1m-echo")
    logits_masked, st_masked = m(x, mask=w)
    logits_plain, _ = m(x)
    assert not torch.allclose(logits_masked, logits_plain), "the mask changes what SKA writes"
    # reading only: a masked tail leaves SKA statistics equal to those of the prefix alone
    _, st_prefix = m(x[:, : q0 - 1])
    for i, n in enumerate(m.layout):
        if n == "ska":
            assert torch.allclose(st_masked[i].C, st_prefix[i].C, atol=1e-10)


def test_grow_ska_rank_keeps_the_function_and_checks_its_arguments():
    from echo_tutor.models import grow_ska_rank

    torch.manual_seed(0)
    small = build("echo", scale="lab")
    for p in small.parameters():  # a non-trivial SKA output (w_o starts at zero)
        torch.nn.init.normal_(p, std=0.1) if p.dim() > 1 else None
    x = torch.randint(1, 128, (2, 150))
    grown = grow_ska_rank(small.eval(), 48, noise=0.0)
    assert grown.blocks[1].mixer.rank == 48 and grown.config.ska_rank == 48
    torch.testing.assert_close(grown.eval()(x)[0], small(x)[0], atol=1e-4, rtol=1e-4)
    noisy = grow_ska_rank(small, 48, noise=0.5).eval()
    assert not torch.allclose(noisy(x)[0], small(x)[0], atol=1e-4)
    with pytest.raises(ValueError, match="rank must be larger"):
        grow_ska_rank(small, 32)
    with pytest.raises(ValueError, match="no SKA mixer"):
        grow_ska_rank(build("ssm", scale="lab"), 64)
    with pytest.raises(ValueError, match="noise"):
        grow_ska_rank(small, 64, noise=-1.0)



# --------------------------------------------------------------------------------- the frozen config
from echo_tutor.models import LAB_PRESETS, HybridConfig  # noqa: E402
from echo_tutor.ska import SpectralKoopmanAttention  # noqa: E402


def _round_trip(m, tmp_path):
    m.eval()
    path = tmp_path / "m.pt"
    m.save(path)
    back = load(path)
    x = torch.randint(0, m.config.vocab_size, (2, 40))
    torch.testing.assert_close(back(x)[0], m(x)[0])
    return back


@pytest.mark.parametrize("scale, preset", [("synth1m", p) for p in PRESETS] + [("lab", p) for p in LAB_PRESETS])
def test_every_preset_survives_save_and_load(scale, preset, tmp_path):
    torch.manual_seed(0)
    m = build(preset, vocab_size=64, scale=scale)
    back = _round_trip(m, tmp_path)
    assert back.config == m.config and back.layout == m.layout


def test_two_ska_blocks_with_overrides_each_get_them(tmp_path):
    """A per-mixer override reaches every block of that mixer (it once reached only the first: the config's
    dict was popped by the first SKA block), and survives save / load."""
    torch.manual_seed(0)
    m = HybridLM(HybridConfig(64, d_model=32, layout="mamba2,ska,ska", n_heads=2,
                 ska_rank=8, mixer_kwargs={"ska": {"power_steps": 0, "chunk_size": 16}}))
    skas = [b.mixer for b in m.blocks if isinstance(b.mixer, SpectralKoopmanAttention)]
    assert [(s.rank, s.power_steps, s.chunk_size) for s in skas] == [(8, 0, 16), (8, 0, 16)]
    assert m.config.mixer_kwargs["ska"]["chunk_size"] == 16 and m.config.ska_rank == 8  # the config still says so
    back = _round_trip(m, tmp_path)
    assert [b.mixer.rank for b in back.blocks if isinstance(b.mixer, SpectralKoopmanAttention)] == [8, 8]


def test_config_is_frozen_and_validated():
    cfg = HybridConfig(64, d_model=32, layout=["mamba2", "ska"], n_heads=2, mixer_kwargs={"ska": {"power_steps": 0}})
    assert cfg.layout == "mamba2,ska" and cfg.mlp_hidden == 13 * 32 // 4
    with pytest.raises(Exception):  # dataclasses.FrozenInstanceError
        cfg.d_model = 64
    with pytest.raises(TypeError):
        cfg.mixer_kwargs["ska"]["power_steps"] = 4
    over = cfg.mixer_overrides("ska")
    over["power_steps"] = 4  # a copy: the config is unchanged
    assert cfg.mixer_kwargs["ska"]["power_steps"] == 0
    with pytest.raises(ValueError, match="ska_rank"):  # one way to set SKA's rank
        HybridConfig(64, d_model=32, layout="ska", n_heads=2, mixer_kwargs={"ska": {"rank": 8}})
    assert HybridConfig(**cfg.to_dict()) == cfg and HybridLM(cfg).config == cfg
    with pytest.raises(ValueError, match="mixer_kwargs: unknown mixer"):
        HybridConfig(64, mixer_kwargs={"conv": {}})
    with pytest.raises(ValueError, match="n_heads=3 must divide d_model=32"):
        HybridConfig(64, d_model=32, n_heads=3)


def test_rebuilt_reads_the_same_weights_another_way_and_leaves_the_model_alone():
    from echo_tutor.models import rebuilt
    from echo_tutor.ska import SpectralKoopmanAttention

    torch.manual_seed(0)
    model = build("echo", vocab_size=32, d_model=32, n_heads=4, d_state=8, ska_rank=6).eval()
    tok = rebuilt(model, {"ska": {"mode": "token"}})
    modes = lambda m: [b.mixer.mode for b in m.blocks if isinstance(b.mixer, SpectralKoopmanAttention)]  # noqa: E731
    assert modes(model) == ["chunk"] and modes(tok) == ["token"] and not tok.training
    for a, b in zip(model.state_dict().values(), tok.state_dict().values()):
        assert torch.equal(a, b)
    x = torch.randint(0, 32, (2, 24))
    with torch.no_grad():  # token mode: every position reads the statistics up to itself, as step() decodes
        assert_close("token mode = step", scan_steps(model, x, model.init_state(2))[0], tok(x)[0], ratio=1e-5)
    with pytest.raises(ValueError, match="model must be a HybridLM"):
        rebuilt(torch.nn.Linear(2, 2), {})
    with pytest.raises(ValueError, match="mixer_kwargs must map"):
        rebuilt(model, {"ska": "token"})
