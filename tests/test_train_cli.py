import dataclasses
import json

import pytest
import torch

from echo_tutor.cli import main
from echo_tutor.errors import BadArgumentError
from echo_tutor.models import build
from echo_tutor.tasks import make_task
from echo_tutor.train import TrainConfig, answer_accuracy, evaluate, save_records, sweep, train

TINY = dict(vocab_size=32, d_model=32, n_heads=4, d_state=8, ska_rank=6)


def tiny(preset="synth1m-echo"):
    torch.manual_seed(0)
    return build(preset, **TINY)


def test_answer_accuracy_counts_only_answer_positions():
    logits = torch.zeros(1, 4, 5)
    logits[0, :, 2] = 1  # predicts 2 everywhere
    labels = torch.tensor([[-100, 2, -100, 3]])
    assert answer_accuracy(logits, labels) == (1, 2)


def test_train_records_history_and_is_reproducible():
    task = make_task("mqar_gap", vocab_size=32, num_kv_pairs=2, gap=[4, 8])
    cfg = TrainConfig(steps=6, batch_size=4, eval_every=3, eval_examples=8)
    r1 = train(tiny(), task, cfg, progress=False)
    r2 = train(tiny(), task, cfg, progress=False)
    assert [h["loss"] for h in r1.history] == [h["loss"] for h in r2.history]
    assert r1.steps_done == 6 and [e["step"] for e in r1.evals] == [3, 6]
    assert 0 <= r1.final_eval <= 1
    assert r1.config == dataclasses.asdict(cfg) and list(r1.config) == [
        "steps", "batch_size", "lr", "weight_decay", "warmup", "clip", "seed", "eval_every", "eval_examples",
        "time_budget_s", "compile"]
    r3 = train(tiny(), task, dataclasses.replace(cfg, seed=1), progress=False)
    assert [h["loss"] for h in r3.history] != [h["loss"] for h in r1.history]


def test_time_budget_stops_training():
    task = make_task("mqar_gap", vocab_size=32, num_kv_pairs=2, gap=64)
    cfg = TrainConfig(steps=10_000, batch_size=2, time_budget_s=0.5, eval_every=10_000, eval_examples=4)
    r = train(tiny(), task, cfg, progress=False)
    assert r.steps_done < 10_000 and r.evals[-1]["step"] == r.steps_done


@pytest.mark.slow
def test_training_learns_a_simple_recall():
    """Attention learns single-pair recall quickly: far above chance (1/16) after 150 steps."""
    torch.manual_seed(0)
    model = build("synth1m-attn", vocab_size=32, d_model=32, n_heads=4)
    task = make_task("mqar_gap", vocab_size=32, num_kv_pairs=1, gap=2)
    r = train(model, task, TrainConfig(steps=150, batch_size=32, lr=3e-3, eval_every=150, eval_examples=128),
              progress=False)
    assert r.final_eval > 0.5, r.final_eval


@pytest.mark.parametrize("field, value, msg", [
    ("steps", 0, "steps must be >= 1"),
    ("steps", 2.5, "steps must be an int"),
    ("lr", -1.0, "lr must be a finite number > 0"),
    ("batch_size", True, "batch_size must be an int, got True"),
    ("eval_every", False, "eval_every must be an int"),
    ("warmup", -1, "warmup must be >= 0"),
    ("weight_decay", float("nan"), "weight_decay must be a finite number >= 0"),
    ("clip", -1.0, "clip must be a finite number >= 0"),
    ("seed", "0", "seed must be an int"),
    ("eval_examples", 0, "eval_examples must be >= 1"),
    ("time_budget_s", 0, "time_budget_s must be a finite number > 0"),
    ("compile", "yes", "compile must be True or False"),
])
def test_train_config_rejects_bad_fields(field, value, msg):
    with pytest.raises(BadArgumentError, match=msg):
        TrainConfig(**{field: value})


def test_train_config_is_frozen():
    cfg = TrainConfig(steps=3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.steps = 4  # type: ignore[misc]
    with pytest.raises(BadArgumentError, match="steps must be >= 1"):
        dataclasses.replace(cfg, steps=0)


def test_train_rejects_bad_arguments():
    task = make_task("niah", vocab_size=32, seq_len=8)
    with pytest.raises(BadArgumentError, match=r"train\(\) takes a TrainConfig: .*got keyword\(s\) steps, lr$"):
        train(tiny(), task, steps=1, lr=3e-3)
    with pytest.raises(BadArgumentError, match=r"config must be a TrainConfig: pass TrainConfig\(steps=\.\.\., \.\.\.\)"):
        train(tiny(), task, 100)
    with pytest.raises(BadArgumentError, match="config must be a TrainConfig.*got dict"):
        train(tiny(), task, {"steps": 1})
    with pytest.raises(BadArgumentError, match="task must be an echo_tutor.tasks.Task"):
        train(tiny(), "niah", TrainConfig(steps=1))
    with pytest.raises(ValueError, match="num_examples must be >= 1"):
        evaluate(tiny(), task, 0)


def test_train_without_config_uses_the_defaults(monkeypatch):
    from echo_tutor.train import loop

    @dataclasses.dataclass(frozen=True)
    class Short(TrainConfig):  # the defaults, but a short run
        steps: int = 2
        eval_examples: int = 4

    monkeypatch.setattr(loop, "TrainConfig", Short)
    r = train(tiny(), make_task("niah", vocab_size=32, seq_len=8), progress=False)
    assert r.steps_done == 2 and r.config == dataclasses.asdict(Short())


def test_sweep_and_save_records(tmp_path):
    recs = sweep([{"a": 1}, {"a": 2}], lambda a: {"b": a * 10}, progress=False)
    assert recs == [{"a": 1, "b": 10}, {"a": 2, "b": 20}]
    assert json.loads(save_records(recs, tmp_path / "r.json").read_text()) == recs
    assert (tmp_path / "r.csv").exists() is False
    save_records(recs, tmp_path / "r.csv")
    assert (tmp_path / "r.csv").read_text().splitlines()[0] == "a,b"
    with pytest.raises(ValueError, match="must end in .json or .csv"):
        save_records(recs, tmp_path / "r.txt")


def test_cli_train_then_eval(tmp_path, capsys):
    out = tmp_path / "m.pt"
    rc = main(["train", "--preset", "ssm", "--vocab", "32", "--d-model", "32", "--pairs", "2", "--gaps", "4",
               "--steps", "3", "--batch-size", "2", "--eval-examples", "4", "--out", str(out), "--quiet"])
    assert rc == 0 and out.exists()
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["preset"] == "ssm" and meta["steps"] == 3
    rc = main(["eval", "--model", str(out), "--vocab", "32", "--pairs", "2", "--gaps", "4", "8",
               "--eval-examples", "4", "--out", str(tmp_path / "e.csv")])
    assert rc == 0
    assert "gap     8" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "--preset", "transformer"],
        ["train", "--steps", "0"],
        ["train", "--lr", "-1"],
        ["train", "--gaps", "-5"],
        ["cliff", "--examples"],
        ["nonsense"],
        [],
    ],
)
def test_cli_bad_arguments_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert "error" in capsys.readouterr().err


def test_cli_library_errors_are_reported_cleanly(capsys):
    rc = main(["eval", "--model", "no-such-model", "--eval-examples", "2"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "model must be a .pt file that exists or a shipped model" in err and "Traceback" not in err


def test_cli_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert all(c in out for c in ("train", "eval", "cliff", "transfer"))
