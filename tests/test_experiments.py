"""The experiment drivers end to end, on tiny models and a couple of steps (the real runs are the CLI's)."""

import json

import pytest
from conftest import untimed

from echo_tutor.experiments import ablation, transfer, transfer_task

TINY = dict(d_model=32, n_heads=4, d_state=8, ska_rank=6)


def test_transfer_writes_both_tables(tmp_path):
    out = transfer(fast=True, out_dir=tmp_path, presets=["ssm", "echo"], tasks=["niah", "tool_trace"], seconds=None,
                   steps=2, niah_lengths=[64, 128], progress=False, model_overrides=TINY,
                   eval_examples=16)
    assert {(r["task"], r["preset"]) for r in out["table"]} == {(t, p) for t in ("niah", "tool_trace") for p in ("ssm", "echo")}
    assert all(r["paper_acc"] is not None and 0 <= r["acc"] <= 1 for r in out["table"])
    assert [(r["preset"], r["length"]) for r in out["niah_length"]] == [("ssm", 64), ("ssm", 128), ("echo", 64), ("echo", 128)]
    assert {r["preset"] for r in out["tool_trace_overwrites"]} == {"ssm", "echo"}
    assert json.loads((tmp_path / "transfer.json").read_text())["table"] == out["table"]


def test_ablation_table(tmp_path):
    cfgs = [("K=0", 0, True, False), ("K=2, prefix mask", 2, True, True)]
    recs = ablation(fast=True, out_dir=tmp_path, seeds=2, steps=2, configs=cfgs, tasks=["mqar_gap"], progress=False,
                    model_overrides=TINY)
    assert len(recs) == 4 and {r["config"] for r in recs} == {"K=0", "K=2, prefix mask"}
    table = (tmp_path / "ablation.md").read_text()
    assert "| K=0 |" in table and "±" in table


def test_transfer_task_names():
    for name in ("mqar", "system_prompt", "tool_trace", "niah", "multi_hop", "common_word"):
        x, y = transfer_task(name).sample(2, 0)
        assert x.shape == y.shape
    with pytest.raises(ValueError, match="transfer tasks"):
        transfer_task("sorting")


# --------------------------------------------------------------------------------- lab-scale cliff tools
import torch  # noqa: E402

from echo_tutor.experiments import ablate_mixer, paired, recall_breakdown, ssm_decay, verdict  # noqa: E402
from echo_tutor.models import HybridLM, build  # noqa: E402
from echo_tutor.tasks import make_task  # noqa: E402


class Oracle(torch.nn.Module):
    """Answers every query with a fixed rule, to test recall_breakdown's bookkeeping."""

    def __init__(self, rule):
        super().__init__()
        self.rule, self.V = rule, 32

    def forward(self, x):
        B, T = x.shape
        n = int((x[0] == 0).sum())  # hidden values: one pad per query
        pred = torch.zeros(B, T, dtype=torch.long)
        for b in range(B):
            table = dict(zip(x[b, :2 * n:2].tolist(), x[b, 1:2 * n:2].tolist()))
            keys = x[b, :2 * n:2].tolist()
            for t in range(T - 2 * n, T, 2):
                k = int(x[b, t])
                pred[b, t] = {"right": table[k], "shift": table[keys[(keys.index(k) + 1) % n]], "other": 1}[self.rule]
        return torch.nn.functional.one_hot(pred, self.V).float(), None


@pytest.mark.parametrize("rule, want", [("right", (1, 0, 0)), ("shift", (0, 1, 0)), ("other", (0, 0, 1))])
def test_recall_breakdown_sorts_answers(rule, want):
    task = make_task("mqar_gap", vocab_size=32, num_kv_pairs=4, gap=5, show_values=False)
    out = recall_breakdown(Oracle(rule), task, num_examples=8, batch_size=4)
    # "shift" answers with another key's value, which can equal the right one when two keys share a value
    assert out["acc"] == pytest.approx(want[0], abs=0.3 if rule == "shift" else 0)
    assert out["bound_wrong"] == pytest.approx(want[1], abs=0.3 if rule == "shift" else 0)
    assert out["other_wrong"] == want[2]
    assert out["acc"] + out["bound_wrong"] + out["other_wrong"] == pytest.approx(1.0)


def test_verdict_and_paired():
    assert paired([0.9, 0.8, 0.7], [0.5, 0.5, 0.5]) == pytest.approx((0.3, 0.1))
    assert verdict(0.3, 0.1) == "better" and verdict(-0.3, 0.1) == "worse"
    assert verdict(0.015, 0.0) == "no difference beyond the seed spread" == verdict(0.1, 0.2)
    with pytest.raises(ValueError, match="paired seed by seed"):
        paired([1.0], [1.0, 2.0])


def test_ablate_mixer_silences_one_block_and_restores_it():
    torch.manual_seed(0)
    m = build("ssm+attn", scale="lab", vocab_size=20)
    x = torch.randint(0, 20, (2, 12))
    before = m(x)[0]
    with ablate_mixer(m, 1):
        off = m(x)[0]
        # by hand: the attention block's residual update without its mixer
        h = m.embed(x)
        h, _ = m.blocks[0](h)
        h = h + m.blocks[1].mlp(m.blocks[1].norm2(h))
        assert torch.allclose(off, m.head(m.norm_f(h)), atol=1e-6)
    assert torch.equal(m(x)[0], before)
    with pytest.raises(ValueError, match="index must name a block"):
        ablate_mixer(m, 2)


def test_ssm_decay_is_exp_a_dt():
    torch.manual_seed(0)
    m = HybridLM(20, d_model=16, layout="mamba2,attn", n_heads=2, d_state=4)
    x = torch.randint(0, 20, (2, 9))
    d = ssm_decay(m, x)
    assert list(d) == [0] and d[0].shape == (2, 9, m.blocks[0].mixer.n_heads)
    assert ((d[0] > 0) & (d[0] < 1)).all()
    mix = m.blocks[0].mixer
    raw = mix.in_proj(m.blocks[0].norm1(m.embed(x)))[..., -mix.n_heads:]
    want = torch.exp(-torch.exp(mix.A_log) * torch.nn.functional.softplus(raw + mix.dt_bias))
    assert torch.allclose(d[0], want, atol=1e-6)


def test_lab_ablation_records(tmp_path):
    recs = ablation(scale="lab", out_dir=tmp_path, seeds=1, steps=2, progress=False, save_models=True)
    assert [r["power_steps"] for r in recs] == [0, 1, 2]
    assert all("acc_16pairs_gap1024" in r and "bound_wrong_8pairs_gap256" in r for r in recs)
    assert sorted(p.name for p in tmp_path.glob("*.pt")) == ["K0_seed0.pt", "K1_seed0.pt", "K2_seed0.pt"]
    with pytest.raises(ValueError, match="scale must be"):
        ablation(scale="huge")


# ------------------------------------------------------------------------------------ the drivers as grids
import os  # noqa: E402
import pathlib  # noqa: E402

import echo_tutor  # noqa: E402
from echo_tutor import experiments  # noqa: E402
from echo_tutor.experiments import cliff  # noqa: E402
from echo_tutor.grid import RECORDS_FILE, GridError, load_records  # noqa: E402
from echo_tutor.pretrained import available  # noqa: E402

REPO = str(pathlib.Path(echo_tutor.__file__).resolve().parent.parent)
RAY_REASON = "the Ray executor needs ray: pip install 'echo_tutor[cluster]'"



@pytest.fixture(scope="module")
def ray_local():
    """An embedded local Ray (2 CPUs at most) whose workers import this checkout's echo_tutor; shut down after
    this module's tests."""
    ray = pytest.importorskip("ray", reason=RAY_REASON)
    if ray.is_initialized():
        ray.shutdown()
    path = os.pathsep.join(p for p in (REPO, os.environ.get("PYTHONPATH", "")) if p)
    ray.init(num_cpus=min(2, os.cpu_count() or 1), include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": path, "OMP_NUM_THREADS": "1"}})
    try:
        yield ray
    finally:
        ray.shutdown()


def _no_training(*args, **kwargs):
    raise AssertionError("a recorded cell was trained again")


def test_ablation_grid_same_records_local_and_ray_and_rerun_trains_nothing(tmp_path, monkeypatch, ray_local):
    cfgs = [("K=0", 0, True, False), ("K=2, prefix mask", 2, True, True)]
    kw = dict(fast=True, seeds=1, steps=2, configs=cfgs, tasks=["mqar_gap"], progress=False, model_overrides=TINY)
    local = ablation(out_dir=tmp_path / "local", **kw)
    remote = ablation(out_dir=tmp_path / "ray", executor="ray", **kw)
    assert ray_local.is_initialized()  # the drivers leave a Ray they did not start running
    assert untimed(remote) == untimed(local) and len(local) == 2
    by_hash = lambda rs: sorted(rs, key=lambda r: r["spec_hash"])  # noqa: E731 - Ray records in finishing order
    assert untimed(by_hash(load_records(tmp_path / "ray"))) == untimed(by_hash(load_records(tmp_path / "local")))
    losses = [r["result"]["final_loss"] for r in load_records(tmp_path / "local")]
    assert len(set(losses)) == 2  # the configs trained differently (and each the same way under Ray)
    assert (tmp_path / "ray" / "ablation.md").read_text().splitlines()[2:] == \
        (tmp_path / "local" / "ablation.md").read_text().splitlines()[2:]

    # the same call into the same out_dir trains nothing and rebuilds the same files
    files = {name: (tmp_path / "local" / name).read_text() for name in (RECORDS_FILE, "ablation.json", "ablation.md")}
    monkeypatch.setattr(experiments, "train", _no_training)
    again = ablation(out_dir=tmp_path / "local", **kw)
    assert again == local
    assert {name: (tmp_path / "local" / name).read_text() for name in files} == files


def _failing_for_seed(seed):
    real = experiments.train

    def train(model, task, *args, **kwargs):
        if kwargs.get("seed") == seed:
            raise RuntimeError(f"no luck with seed {seed}")
        return real(model, task, *args, **kwargs)

    return train


def test_ablation_failed_cell_is_raised_after_the_rest_is_written(tmp_path, monkeypatch):
    kw = dict(fast=True, seeds=2, steps=2, configs=[("K=1", 1, True, False)], tasks=["mqar_gap"], progress=False,
              model_overrides=TINY)
    monkeypatch.setattr(experiments, "train", _failing_for_seed(1))
    with pytest.raises(GridError) as e:
        ablation(out_dir=tmp_path, **kw)
    assert [r["spec"]["seed"] for r in e.value.failed] == [1] and e.value.total == 2
    lines = str(e.value).splitlines()
    assert lines[0].startswith("1 of 2 cells failed") and RECORDS_FILE in lines[0]
    assert len(lines) == 2 and '"seed":1' in lines[1] and lines[1].endswith("RuntimeError: no luck with seed 1")
    assert [r["seed"] for r in json.loads((tmp_path / "ablation.json").read_text())] == [0]
    assert "(1/2 seeds)" in (tmp_path / "ablation.md").read_text()

    monkeypatch.undo()  # the rerun trains only the failed cell
    recs = ablation(out_dir=tmp_path, **kw)
    assert [r["seed"] for r in recs] == [0, 1]
    assert [(r["spec"]["seed"], bool(r["error"])) for r in load_records(tmp_path)] == [(0, False), (1, True), (1, False)]
    assert "seeds)" not in (tmp_path / "ablation.md").read_text().splitlines()[2]


def test_cliff_grid_on_a_shipped_checkpoint(tmp_path, monkeypatch):
    """One cell per (preset, pairs, gap); a failing cell is listed, the others are written."""
    preset = sorted(available())[0]
    real = experiments.recall_breakdown

    def breakdown(model, task, *args, **kwargs):
        if task.kwargs["gap"] == 16:
            raise RuntimeError("gap 16 is cursed")
        return real(model, task, *args, **kwargs)

    monkeypatch.setattr(experiments, "recall_breakdown", breakdown)
    kw = dict(fast=True, examples=4, presets=[preset], pairs=[2], gaps=[8, 16], progress=False)
    with pytest.raises(GridError, match="gap 16 is cursed") as e:
        cliff(out_dir=tmp_path, **kw)
    assert [r["spec"]["task"]["gap"] for r in e.value.failed] == [16]
    assert e.value.failed[0]["spec"]["checkpoint"]["sha1"]  # the spec pins the checkpoint's contents
    written = json.loads((tmp_path / "cliff.json").read_text())
    assert [(r["preset"], r["pairs"], r["gap"]) for r in written] == [(preset, 2, 8)]
    monkeypatch.undo()
    recs = cliff(out_dir=tmp_path, **kw)
    assert [(r["gap"], r["state_bytes"] > 0) for r in recs] == [(8, True), (16, True)] and recs[0] == written[0]
    with pytest.raises(ValueError, match="presets must be drawn from the shipped checkpoints"):
        cliff(out_dir=tmp_path, presets=["no-such-model"], pairs=[2], gaps=[8], progress=False)
    with pytest.raises(ValueError, match="gaps must hold ints >= 0"):
        cliff(out_dir=tmp_path, presets=[preset], pairs=[2], gaps=[-1], progress=False)
    with pytest.raises(ValueError, match="executor must be one of"):
        cliff(out_dir=tmp_path / "x", presets=[preset], pairs=[2], gaps=[8], progress=False, executor="slurm")


# --------------------------------------------------------------------------------- lab-scale transfer
from echo_tutor.experiments import LAB_TRANSFER, transfer_cell  # noqa: E402


def test_transfer_at_lab_scale_uses_lab_presets_chunks_and_zero_filler(tmp_path, monkeypatch):
    built = []
    import echo_tutor.experiments as ex

    real_build = ex.build

    def spy(preset, **kw):
        m = real_build(preset, **kw)
        built.append((preset, kw.get("scale"), m))
        return m

    monkeypatch.setattr(ex, "build", spy)
    out = transfer(fast=True, out_dir=tmp_path, presets=["ssm", "echo"], tasks=["mqar", "niah"], steps=2,
                   niah_lengths=[64], progress=False, eval_examples=8, scale="lab")
    assert out["scale"] == "lab" and out["seconds_per_model"] is None and out["max_steps"] == 2
    assert {(p, s) for p, s, _ in built} == {("ssm", "lab"), ("echo", "lab")}
    echo = next(m for p, _, m in built if p == "echo")
    assert echo.blocks[1].mixer.chunk_size == LAB_TRANSFER["model_overrides"]["mixer_kwargs"]["ska"]["chunk_size"] == 16
    assert echo.config["d_model"] == 64
    spec = json.loads((tmp_path / "records.jsonl").read_text().splitlines()[0])["spec"]
    assert spec["task"]["random_non_queries"] is False and spec["scale"] == "lab"
    x, _ = transfer_task("mqar", scale="lab").sample(4, 0)
    assert (x[:, 16:] == 0).float().mean() > 0.7  # filler 0 (queries and their values are the rest)


def test_transfer_scale_is_checked():
    with pytest.raises(ValueError, match="scale must be one of"):
        transfer(scale="huge", progress=False)
    with pytest.raises(ValueError, match="presets"):
        transfer(scale="lab", presets=["attn"], progress=False)
    with pytest.raises(ValueError, match="scale must be one of"):
        transfer_task("niah", scale="tiny")


def test_grow_ska_rank_keeps_the_function_and_checks_its_arguments():
    from echo_tutor.models import grow_ska_rank

    torch.manual_seed(0)
    small = build("echo", scale="lab")
    for p in small.parameters():  # a non-trivial SKA output (w_o starts at zero)
        torch.nn.init.normal_(p, std=0.1) if p.dim() > 1 else None
    x = torch.randint(1, 128, (2, 150))
    grown = grow_ska_rank(small.eval(), 48, noise=0.0)
    assert grown.blocks[1].mixer.rank == 48 and grown.config["ska_rank"] == 48
    torch.testing.assert_close(grown.eval()(x)[0], small(x)[0], atol=1e-4, rtol=1e-4)
    noisy = grow_ska_rank(small, 48, noise=0.5).eval()
    assert not torch.allclose(noisy(x)[0], small(x)[0], atol=1e-4)
    with pytest.raises(ValueError, match="rank must be larger"):
        grow_ska_rank(small, 32)
    with pytest.raises(ValueError, match="no SKA mixer"):
        grow_ska_rank(build("ssm", scale="lab"), 64)
    with pytest.raises(ValueError, match="noise"):
        grow_ska_rank(small, 64, noise=-1.0)
