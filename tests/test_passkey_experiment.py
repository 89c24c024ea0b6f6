"""The pass-key study (echo_tutor.experiments.passkey): its cells, the sign test and verdicts on made-up
results (fast), and the fast recipe on SmolLM2 at a short length (slow)."""

import pytest

from echo_tutor.experiments import passkey as P


def test_cells_put_the_original_first_and_give_every_mixer_its_controls():
    recipe = P.RECIPES["passkey/lab"]
    cells = P.cells(recipe)
    prompts = len(recipe.formats) * len(recipe.keys) * len(recipe.lengths)
    assert all(c.kind == "original" and c.layers == [] for c in cells[:prompts])
    per_count = prompts * (1 + 2 + 1)  # the window alone, two mixers, the SKA mixer's readout shut
    assert len(cells) == prompts + len(recipe.counts) * per_count and len({c.key for c in cells}) == len(cells)
    shut = {c.variant for c in cells if c.kind == "shut"}
    assert shut == {"window+ska:K1"}  # window + linear shut is the window alone: not run twice
    for c in cells[prompts:]:
        assert len(c.layers) in recipe.counts and c.layers == sorted(c.layers)


def test_a_sparse_cache_is_controlled_by_the_window_over_as_many_tokens():
    recipe = P.PassKeyRecipe("t", "a test", formats=("chat",), variants=("window+ska:K1:S16", "window+linear:K0:S16"))
    cells = P.cells(recipe)
    kinds = [(c.kind, c.variant) for c in cells]
    assert kinds == [("original", ""), ("window", "window"), ("window", "window:W80"),
                     ("mixer", "window+ska:K1:S16"), ("shut", "window+ska:K1:S16"),
                     ("mixer", "window+linear:K0:S16"), ("shut", "window+linear:K0:S16")]
    assert P.window_control("window+ska:K1") == "window"
    assert P.window_control("window+ska:K1:W80") == P.window_control("window+linear:K0:S16") == "window:W80"
    keys = [str(30000 + i) for i in range(4)]
    answers = {"window": [None] * 4, "window:W80": keys, "window+ska:K1:S16": keys, "window+linear:K0:S16": keys}
    records = [{"spec": c.spec(), "result": _res(answers.get(c.variant, [None] * 4) if c.kind != "original" else keys,
                                                 keys), "error": None} for c in cells]
    verdicts = {v["variant"]: v for v in P.summarize(recipe, records)["verdicts"]}
    # the window over W + S tokens retrieves: the cache does not keep the needle, whatever the W64 window does
    assert verdicts["window+ska:K1:S16"]["window_rate"] == 1.0 and not verdicts["window+ska:K1:S16"]["keeps"]


def test_perplexity_cells_read_the_same_windows_and_pair_against_the_original():
    recipe = P.PassKeyRecipe("t", "a test", formats=("chat",), variants=("window+ska:K1",), ppl_windows=3)
    held = [c for c in P.cells(recipe) if c.fmt == P.HELDOUT]
    assert [(c.kind, c.variant) for c in held] == [("original", ""), ("window", "window"), ("mixer", "window+ska:K1")]
    assert {(c.length, c.trials) for c in held} == {(512, 3)}
    nll = {"original": [2.0, 2.1, 2.2], "window": [2.3, 2.4, 2.5], "mixer": [2.02, 2.12, 2.22]}
    keys = ["11111"] * 20
    records = [{"spec": c.spec(), "error": None, "result": (
        {"nll": nll[c.kind], "mean_nll": sum(nll[c.kind]) / 3, "windows": 3, "context": 512} if c.fmt == P.HELDOUT
        else _res(keys, keys))} for c in P.cells(recipe)]
    out = P.summarize(recipe, records)
    ppl = {q["kind"]: q for q in out["perplexity"]}
    assert ppl["original"]["ratio"] == 1.0 and ppl["mixer"]["ratio"] == pytest.approx(2.718281828 ** 0.02)
    assert ppl["window"]["lo"] == pytest.approx(0.3) and ppl["window"]["hi"] == pytest.approx(0.3)  # a constant shift
    assert all(r["fmt"] != P.HELDOUT for r in out["rows"]) and "| window+ska:K1 | 8 | 512 | 3 |" in P.format_summary(out)
    assert P._describe(records[-1]).startswith("mixer perplexity ") and P._describe(records[0]) == "original 20/20"
    with pytest.raises(ValueError, match="ppl_windows"):
        P.PassKeyRecipe("t", "a test", ppl_windows=-1)


def test_the_cli_takes_variants(capsys, tmp_path):
    from echo_tutor.cli import main

    assert main(["passkey", "--variants", "window+ska:K1:Q4", "--out-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "':S<n>'" in err and len(err.strip().splitlines()) == 1


def _res(answers, keys):
    return {"answers": answers, "keys": keys, "correct": sum(a == k for a, k in zip(answers, keys)),
            "trials": len(keys), "ci95": [0.0, 1.0], "tokens": 1000.0}


def test_the_sign_test_and_the_verdict():
    assert P.sign_test(0, 0) == 1.0 and P.sign_test(5, 0) == pytest.approx(2 / 32)
    assert P.sign_test(6, 0) == pytest.approx(2 / 64) and P.sign_test(3, 3) == 1.0
    keys = [str(10000 + i) for i in range(8)]
    mixer = _res(keys, keys)
    blind = _res([None] * 8, keys)
    half = _res(keys[:4] + [None] * 4, keys)
    assert P.keeps(mixer, [blind, blind])["keeps"]  # 8 wins, no loss, against both
    assert not P.keeps(mixer, [blind, half])["keeps"]  # 4 wins against the second: p = 0.125
    assert not P.keeps(blind, [mixer])["keeps"]
    with pytest.raises(ValueError, match="same prompts"):
        P.keeps(mixer, [_res(keys, keys[::-1])])


def test_summary_pairs_each_mixer_with_its_controls():
    recipe = P.PassKeyRecipe("t", "a test", formats=("plain",), trials=6, variants=("window+ska:K1",))
    keys = [str(20000 + i) for i in range(6)]
    results = {"original": keys, "window": [None] * 6, "mixer": keys, "shut": [None] * 6}
    records = [{"spec": c.spec(), "result": _res(results[c.kind], keys), "error": None} for c in P.cells(recipe)]
    out = P.summarize(recipe, records)
    assert [r["kind"] for r in out["rows"]] == ["original", "window", "mixer", "shut"]
    (v,) = out["verdicts"]
    assert v["keeps"] and v["rate"] == 1.0 and v["window_rate"] == 0.0 and v["shut_rate"] == 0.0
    assert "| window+ska:K1 | 8 | plain | 1 | 1024 | 1.00 | 0.00 | 0.00 | yes |" in P.format_summary(out)


@pytest.mark.parametrize("kw, match", [(dict(formats=("html",)), "formats"), (dict(trials=0), "trials"),
                                       (dict(variants=("window",)), "control"), (dict(lengths=(10,)), "lengths"),
                                       (dict(variants=("window+gru",)), "variant"), (dict(scale="lab"), "scale")])
def test_bad_recipes(kw, match):
    with pytest.raises(ValueError, match=match):
        P.PassKeyRecipe("t", "a test", **kw)


@pytest.mark.slow
def test_the_fast_recipe_runs_on_smollm2_and_resumes(tmp_path):
    pytest.importorskip("transformers")
    kw = dict(trials=1, lengths=(256,), formats=("plain",), variants=("window+ska:K1",), progress=False,
              ppl_windows=2, ppl_context=128)
    out = P.run("passkey/fast", tmp_path, **kw)
    assert [r["kind"] for r in out["rows"]] == ["original", "window", "mixer", "shut"] and len(out["verdicts"]) == 1
    assert [q["kind"] for q in out["perplexity"]] == ["original", "window", "mixer"]
    assert out["perplexity"][1]["ratio"] > 1.0  # the window alone at 8 layers, past 68 tokens: some loss
    assert (tmp_path / "passkey.md").read_text().startswith("| model |")
    n = len((tmp_path / "records.jsonl").read_text().splitlines())
    assert P.run("passkey/fast", tmp_path, **kw) == out
    assert len((tmp_path / "records.jsonl").read_text().splitlines()) == n  # resumed: nothing ran again
