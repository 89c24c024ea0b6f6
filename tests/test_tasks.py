"""Every generator's layout (positions, vocabulary halves, labels), seeding and errors."""

import numpy as np
import pytest
import torch

from echo_tutor.tasks import (IGNORE, TASKS, common_word, make_task, mqar, mqar_gap, multi_hop, niah,
                              system_prompt, tool_trace)

V = 64
CALLS = {
    "mqar": lambda s: mqar(V, 64, 8, 32, s),
    "mqar_gap": lambda s: mqar_gap(V, 8, 20, 32, s),
    "niah": lambda s: niah(V, 40, 32, s),
    "tool_trace": lambda s: tool_trace(V, 4, 10, 3, 32, s),
    "multi_hop": lambda s: multi_hop(V, 4, 32, s, gap=6),
    "system_prompt": lambda s: system_prompt(V, 4, 20, 3, 32, s),
    "common_word": lambda s: common_word(V, 30, 32, s),
}


@pytest.mark.parametrize("name", list(CALLS))
def test_types_seeding_and_label_positions(name):
    x, y = CALLS[name](0)
    assert x.dtype == y.dtype == torch.int64 and x.shape == y.shape and x.shape[0] == 32
    assert (x >= 0).all() and (x < V).all()
    x2, y2 = CALLS[name](0)
    x3, _ = CALLS[name](1)
    assert torch.equal(x, x2) and torch.equal(y, y2), "same seed, same data"
    assert not torch.equal(x, x3), "another seed, other data"
    ans = y != IGNORE
    assert ans.any(dim=1).all(), "every example has an answer"
    # the answer is the next input token wherever there is one (teacher-forced layouts)
    inner = ans[:, :-1]
    assert torch.equal(y[:, :-1][inner], x[:, 1:][inner]) or name == "common_word"


def test_seeding_is_local_not_global():
    np.random.seed(123)
    torch.manual_seed(123)
    a = mqar(V, 64, 8, 4, seed=5)[0]
    np.random.seed(999)
    torch.manual_seed(999)
    assert torch.equal(a, mqar(V, 64, 8, 4, seed=5)[0])


def test_mqar_layout():
    x, y = mqar(V, 128, 8, 64, seed=0)
    keys, vals = x[:, 0:16:2], x[:, 1:16:2]
    assert ((keys >= 1) & (keys < V // 2)).all() and ((vals >= V // 2) & (vals < V)).all()
    assert all(len(set(r.tolist())) == 8 for r in keys), "distinct keys per example"
    assert ((y != IGNORE).sum(1) == 8).all(), "each key queried once"
    qpos = (y != IGNORE).nonzero()
    assert ((qpos[:, 1] - 16) % 2 == 0).all() and (qpos[:, 1] >= 16).all(), "queries at even offsets after the context"
    for b, t in qpos.tolist():
        k = x[b, t].item()
        i = keys[b].tolist().index(k)
        assert y[b, t] == vals[b, i], "the label is the bound value"
    # power law: most queries near the context
    offs = (qpos[:, 1] - 16) // 2
    assert (offs < 14).float().mean() > 0.5


def test_mqar_gap_layout():
    x, y = mqar_gap(V, 6, 100, 16, seed=0)
    assert x.shape[1] == 4 * 6 + 100
    assert (y[:, : 12 + 100] == IGNORE).all()
    q = x[:, 112::2]
    assert (torch.sort(q, 1).values == torch.sort(x[:, 0:12:2], 1).values).all(), "every key queried once"
    assert torch.equal(y[:, 112::2], x[:, 113::2])
    for b in range(16):
        bind = dict(zip(x[b, 0:12:2].tolist(), x[b, 1:12:2].tolist()))
        assert all(bind[k] == v for k, v in zip(x[b, 112::2].tolist(), x[b, 113::2].tolist()))


def test_mqar_gap_distractor_modes():
    x, _ = mqar_gap(V, 6, 500, 8, seed=0)  # default: the gap holds value-half tokens only
    gap = x[:, 12:512]
    assert (gap >= V // 2).all(), "no key recurs in the gap"
    xu, _ = mqar_gap(V, 6, 500, 8, seed=0, distractors="uniform")
    gap_u = xu[:, 12:512]
    assert (gap_u < V // 2).any() and (gap_u >= 1).all(), "uniform distractors include key tokens"
    with pytest.raises(ValueError, match="distractors must be"):
        mqar_gap(V, 6, 5, 1, 0, distractors="keys")


def test_niah_layout():
    x, y = niah(V, 50, 64, seed=0)
    assert (y != IGNORE).sum() == 64 and (y[:, -2] != IGNORE).all()
    for b in range(64):
        k, v = x[b, -2].item(), x[b, -1].item()
        assert k < V // 2 and v >= V // 2
        hay = x[b, :-2].tolist()
        assert hay.count(k) == 1 and hay[hay.index(k) + 1] == v, "one needle, followed by its value"


def test_tool_trace_answer_is_latest_write():
    x, y = tool_trace(V, 3, 12, 4, 32, seed=0)
    SET, GET = V - 1, V - 2
    for b in range(32):
        latest = {}
        row = x[b].tolist()
        for j in range(0, len(row), 3):
            op, var, val = row[j: j + 3]
            if op == SET:
                latest[var] = val
            else:
                assert op == GET and y[b, j + 1] == latest[var] == val
    # overwrites happen
    assert any(len(set(x[b, 1:36:3].tolist())) < 12 for b in range(32))


def test_multi_hop_two_hops():
    x, y = multi_hop(V, 4, 16, seed=0, gap=5)
    for b in range(16):
        r = x[b].tolist()
        hop1 = dict(zip(r[0:8:2], r[1:8:2]))
        hop2 = dict(zip(r[8:16:2], r[9:16:2]))
        for t in range(21, len(r), 2):
            assert y[b, t] == hop2[hop1[r[t]]]


def test_system_prompt_decoys_are_not_answers():
    x, y = system_prompt(V, 3, 30, 4, 16, seed=0)
    DEF = V - 1
    for b in range(16):
        r = x[b].tolist()
        defs = {r[i + 1]: r[i + 2] for i in range(0, 9, 3)}
        assert all(r[i] == DEF for i in range(0, 9, 3))
        gap = r[9:39]
        decoys = [(gap[i], gap[i + 1]) for i in range(0, 30, 2) if gap[i] in defs]
        assert len(decoys) >= 1 and all(v != defs[k] for k, v in decoys)
        for t in range(39, len(r), 2):
            assert y[b, t] == defs[r[t]]


def test_common_word_counts():
    x, y = common_word(V, 30, 32, seed=0, repeats=4)
    for b in range(32):
        ctx = x[b, :-1].tolist()
        tgt = y[b, -1].item()
        assert ctx.count(tgt) == 4 and all(ctx.count(t) == 1 for t in set(ctx) - {tgt})
        assert x[b, -1] == V - 1


@pytest.mark.parametrize(
    "call,msg",
    [
        (lambda: mqar(64, 10, 8, 4, 0), "seq_len=10 too short"),
        (lambda: mqar(8, 64, 8, 4, 0), "num_kv_pairs=8 needs"),
        (lambda: mqar(64, 64, 0, 4, 0), "num_kv_pairs must be >= 1"),
        (lambda: mqar(64, 64, 4, 4, 0, power_a=0), "power_a"),
        (lambda: mqar_gap(64, 4, -1, 4, 0), "gap must be >= 0"),
        (lambda: mqar_gap(64, 4, 10, 0, 0), "num_examples must be >= 1"),
        (lambda: mqar_gap(64, 4.5, 10, 4, 0), "num_kv_pairs must be an int"),
        (lambda: niah(64, 3, 4, 0), "seq_len must be >= 4"),
        (lambda: tool_trace(64, 5, 3, 1, 4, 0), "num_ops=3 must be >= num_vars=5"),
        (lambda: multi_hop(16, 8, 4, 0), "num_chains=8 needs"),
        (lambda: system_prompt(64, 2, 4, 3, 4, 0), "gap=4 must hold the decoys"),
        (lambda: common_word(16, 40, 4, 0), "seq_len=40 too long"),
        (lambda: make_task("recall"), "task name must be one of"),
    ],
)
def test_impossible_arguments_raise(call, msg):
    with pytest.raises(ValueError, match=msg):
        call()


def test_task_mixture_draws_from_the_list():
    t = make_task("mqar_gap", vocab_size=V, num_kv_pairs=4, gap=[8, 32])
    lengths = {t.sample(2, s)[0].shape[1] for s in range(20)}
    assert lengths == {16 + 8, 16 + 32}
    assert t.sample(3, 7)[0].equal(t.sample(3, 7)[0])
    assert set(TASKS) == set(CALLS)


@pytest.mark.parametrize("module", ["associative", "needle", "tools", "hops", "prompt", "counting"])
def test_the_worked_examples_in_the_docstrings_hold(module):
    """Every generator's docstring shows a small worked example of its layout; the layout helpers
    (context_bindings, writes_at_answers) show theirs on the same prompts."""
    import doctest
    import importlib

    mod = importlib.import_module(f"echo_tutor.tasks.{module}")
    result = doctest.testmod(mod, optionflags=doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.attempted > 0 and result.failed == 0, f"{module}: {result}"
