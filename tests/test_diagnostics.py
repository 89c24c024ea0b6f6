"""Looking inside models (echo_tutor.experiments.diagnostics) and the statistics the labs report."""

import pytest
import torch

from echo_tutor.experiments import ablate_mixer, paired, recall_breakdown, ssm_decay, tool_trace_by_writes, verdict
from echo_tutor.models import HybridLM, build
from echo_tutor.tasks import IGNORE, make_task, writes_at_answers


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



class Latest(torch.nn.Module):
    """Answers every tool-trace query with the variable's *first* value: right exactly when it was written once."""

    def __init__(self, V):
        super().__init__()
        self.V = V

    def forward(self, x):
        B, T = x.shape
        pred = torch.zeros(B, T, dtype=torch.long)
        SET = self.V - 1
        for b in range(B):
            first = {}
            for j in range(0, T, 3):
                if x[b, j] == SET:
                    first.setdefault(int(x[b, j + 1]), int(x[b, j + 2]))
                else:
                    pred[b, j + 1] = first[int(x[b, j + 1])]
        return torch.nn.functional.one_hot(pred, self.V).float(), None


def test_tool_trace_by_writes_reads_the_layout_from_the_task():
    task = make_task("tool_trace", vocab_size=32, num_vars=3, num_ops=9, num_queries=4)
    out = tool_trace_by_writes(Latest(32), task, num_examples=32, batch_size=8)
    assert out["1"] == 1.0  # the first value is the latest when there was one write
    assert out["2"] < 0.5 and out["3+"] < 0.5  # otherwise almost never (unless a value was repeated)
    x, y = task.sample(4, 0)
    w = writes_at_answers(x, y, 32)
    assert ((w > 0) == (y != IGNORE)).all()
    with pytest.raises(ValueError, match="task must be a tool_trace Task"):
        tool_trace_by_writes(Latest(32), make_task("niah", vocab_size=32, seq_len=8))
