"""The ablation experiment end to end, on tiny models and a couple of steps; the same records locally and on
Ray; a rerun trains nothing; a failed cell is listed after the rest is written."""

import dataclasses
import json

import pytest
import torch
from conftest import untimed

from echo_tutor.experiments import ablation
from echo_tutor.grid import RECORDS_FILE, GridError, GridOptions, load_records, run_grid

TINY = dict(d_model=32, n_heads=4, d_state=8, ska_rank=6)
CFGS = [("K=0", 0, True, False), ("K=2, prefix mask", 2, True, True)]


def small(**kw):
    """ablation/small on tiny models, MQAR-gap only, two steps."""
    return ablation.RECIPES["ablation/small"].only(tasks=["mqar_gap"]), dict(
        dict(seeds=(0,), steps=2, configs=CFGS, model_overrides=TINY, progress=False), **kw)


def test_ablation_table(tmp_path):
    recipe, kw = small(seeds=(0, 1))
    recs = ablation.run(recipe, tmp_path, **kw)
    assert len(recs) == 4 and {r["config"] for r in recs} == {"K=0", "K=2, prefix mask"}
    table = (tmp_path / "ablation.md").read_text()
    assert "| K=0 |" in table and "±" in table


@pytest.mark.slow  # more than 20 s on 2 cores
def test_lab_ablation_records_and_saved_models(tmp_path):
    recs = ablation.run("ablation/lab", tmp_path, seeds=(0,), steps=2, progress=False, save_models=True)
    assert [r["power_steps"] for r in recs] == [0, 1, 2]
    assert all("acc_16pairs_gap1024" in r and "bound_wrong_8pairs_gap256" in r for r in recs)
    assert sorted(p.name for p in tmp_path.glob("*.pt")) == ["K0_seed0.pt", "K1_seed0.pt", "K2_seed0.pt"]


def _no_training(*args, **kwargs):
    raise AssertionError("a recorded cell was trained again")


@pytest.mark.slow  # more than 20 s on 2 cores
def test_same_records_local_and_ray_and_a_rerun_trains_nothing(tmp_path, monkeypatch, ray_local):
    recipe, kw = small()
    # A Ray worker runs with OMP_NUM_THREADS = its cpus per cell (1); local runs use torch's default. Another
    # thread count sums in another order (final losses 1 ulp apart), so the local run uses one thread too.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        local = ablation.run(recipe, tmp_path / "local", **kw)
    finally:
        torch.set_num_threads(threads)
    remote = ablation.run(recipe, tmp_path / "ray", grid=GridOptions(executor="ray"), **kw)
    assert ray_local.is_initialized()  # the drivers leave a Ray they did not start running
    assert untimed(remote) == untimed(local) and len(local) == 2
    by_hash = lambda rs: sorted(rs, key=lambda r: r["spec_hash"])  # noqa: E731 - Ray records in finishing order
    assert untimed(by_hash(load_records(tmp_path / "ray"))) == untimed(by_hash(load_records(tmp_path / "local")))
    losses = [r["result"]["final_loss"] for r in load_records(tmp_path / "local")]
    assert len(set(losses)) == 2  # the configs trained differently (and each the same way under Ray)
    assert (tmp_path / "ray" / "ablation.md").read_text().splitlines()[2:] == \
        (tmp_path / "local" / "ablation.md").read_text().splitlines()[2:]

    files = {name: (tmp_path / "local" / name).read_text() for name in (RECORDS_FILE, "ablation.json", "ablation.md")}
    monkeypatch.setattr(ablation, "train", _no_training)
    again = ablation.run(recipe, tmp_path / "local", **kw)
    assert again == local
    assert {name: (tmp_path / "local" / name).read_text() for name in files} == files


def _failing_for_seed(seed):
    real = ablation.train

    def train(model, task, *args, **kwargs):
        if (args[0] if args else kwargs["config"]).seed == seed:
            raise RuntimeError(f"no luck with seed {seed}")
        return real(model, task, *args, **kwargs)

    return train


def test_failed_cell_is_raised_after_the_rest_is_written(tmp_path, monkeypatch):
    recipe, kw = small(seeds=(0, 1), configs=[("K=1", 1, True, False)])
    monkeypatch.setattr(ablation, "train", _failing_for_seed(1))
    with pytest.raises(GridError) as e:
        ablation.run(recipe, tmp_path, **kw)
    assert [r["spec"]["seed"] for r in e.value.failed] == [1] and e.value.total == 2
    lines = str(e.value).splitlines()
    assert lines[0].startswith("1 of 2 cells failed") and RECORDS_FILE in lines[0]
    assert len(lines) == 2 and '"seed":1' in lines[1] and lines[1].endswith("RuntimeError: no luck with seed 1")
    assert [r["seed"] for r in json.loads((tmp_path / "ablation.json").read_text())] == [0]
    assert "(1/2 seeds)" in (tmp_path / "ablation.md").read_text()

    monkeypatch.undo()  # the rerun trains only the failed cell
    recs = ablation.run(recipe, tmp_path, **kw)
    assert [r["seed"] for r in recs] == [0, 1]
    assert [(r["spec"]["seed"], bool(r["error"])) for r in load_records(tmp_path)] == [(0, False), (1, True), (1, False)]
    assert "seeds)" not in (tmp_path / "ablation.md").read_text().splitlines()[2]


def test_records_of_the_older_dict_specs_still_count(tmp_path, monkeypatch):
    """The dict specs cells() wrote before AblationCell are today's specs (every key was always there): a
    records.jsonl of them is a finished grid; a rerun trains nothing and reports it."""
    recipe, kw = small()
    specs = [{"experiment": "ablation", "probes": False,
              "task": {"name": "mqar_gap", "vocab_size": 64, "num_kv_pairs": 4, "gap": [32, 64, 128]},
              "config": name, "power_steps": k, "spectral_norm": sn, "prefix_mask": mask, "seed": 0,
              "model": {"preset": "synth1m-echo", "scale": "synth1m", "vocab_size": 64, "overrides": TINY},
              "steps": 2, "batch_size": 16, "lr": 0.003, "eval_every": 2, "eval_examples": 256, "save_as": None}
             for name, k, sn, mask in CFGS]
    run_grid(specs, lambda s: {"acc": 0.5, "steps": 2, "train_seconds": 1.0, "final_loss": 1.0, "device": "cpu"},
             tmp_path, progress=False)
    before = (tmp_path / RECORDS_FILE).read_text()
    cells = ablation.cells(dataclasses.replace(recipe, **{k: v for k, v in kw.items() if k != "progress"}))
    assert [c.spec() for c in cells] == specs and all(type(c) is ablation.AblationCell for c in cells)
    monkeypatch.setattr(ablation, "ablation_cell", _no_training)
    monkeypatch.setattr(ablation, "train", _no_training)
    rows = ablation.run(recipe, tmp_path, **kw)
    assert [(r["config"], r["acc"]) for r in rows] == [("K=0", 0.5), ("K=2, prefix mask", 0.5)]
    assert (tmp_path / RECORDS_FILE).read_text() == before  # nothing appended
