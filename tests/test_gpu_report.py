"""The prepared GPU report (`make gpu-check`): on a CPU it refuses clearly, and its dry run fills every section."""

import json
import pathlib
import sys

import pytest
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "scripts"))
import gpu_report  # noqa: E402


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU refusal")
def test_refuses_without_cuda(tmp_path, capsys):
    assert gpu_report.main(["--out", str(tmp_path / "r.md")]) == 2
    assert "no CUDA device" in capsys.readouterr().err
    assert not (tmp_path / "r.md").exists()


@pytest.mark.slow  # more than 20 s on 2 cores
def test_dry_run_fills_every_section(tmp_path):
    out = tmp_path / "r.md"
    assert gpu_report.main(["--allow-cpu", "--quick", "--out", str(out), "--budget-s", "300"]) == 0
    md, data = out.read_text(), json.loads(out.with_suffix(".json").read_text())
    assert list(data["sections"]) == [name for name, _ in gpu_report.PLAN]
    assert not [n for n, s in data["sections"].items() if "error" in s], md
    for name, _ in gpu_report.PLAN:
        assert f"## {name}" in md
    assert "| synth1m-echo-k1 |" in md and "| echo |" in md  # the preset steps and the K runs
    k = data["sections"]["K=1 vs K=2, synth1m size"]
    assert [len(k[p]) for p in ("synth1m-echo-k1", "synth1m-echo")] == [3, 3]
    assert data["sections"]["GPU tests"]["rc"] is not None
