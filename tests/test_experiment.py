import json

import pytest

from selhn.cli import main
from selhn.data.synth import SynthConfig, generate
from selhn.training.run_dir import read_log


@pytest.mark.training
def test_experiment_end_to_end(tmp_path, capsys):
    data = tmp_path / "data"
    generate(data, SynthConfig(train=48, dev=10, test=10, regions=8, feature_dim=12))
    tiny = ["--model.embed_size=16", "--model.word_dim=8", "--model.mlp_hidden=8"]
    tiny += ["--train.batch_size=16", "--train.epochs=2", "--train.log_every=1"]
    argv = ["experiment", "--data", str(data), "--out", str(tmp_path / "exp"), "--seeds", "2"]
    assert main([*argv, "--no-progress", *tiny]) == 0
    exp = tmp_path / "exp"
    for name in ("grad_norms.png", "vanishing.png", "rsum.png", "results.md", "results.json"):
        assert (exp / name).stat().st_size > 0, name
    assert (exp / "grad_norms.png").read_bytes()[:4] == b"\x89PNG"
    results = json.loads((exp / "results.json").read_text())
    assert list(results["losses"]) == ["all", "hardest", "hardest+warmup", "selhn", "infonce"]
    for loss, entry in results["losses"].items():
        assert len(entry["seeds"]) == 2
        rsums = [seed["rsum"] for seed in entry["seeds"]]
        assert abs(entry["rsum"]["mean"] - sum(rsums) / 2) < 1e-9, loss
        steps, evals = read_log(exp / "runs" / f"{loss}-seed1")
        assert [r["epoch"] for r in evals] == [1, 2]
        objectives = {r["objective"] for r in steps}
        expected = (
            {"all", "hardest"} if loss == "hardest+warmup" else {entry["changes"]["loss.name"]}
        )
        assert objectives == expected, loss
    # the shared configuration is recorded as the runs resolved it: synthetic data get the BiGRU
    assert results["config"]["model"]["text_encoder"] == "bigru"
    assert results["config"]["loss"]["name"] == "selhn"
    markdown = (exp / "results.md").read_text()
    assert "text_encoder: auto" not in markdown and "name: auto" not in markdown
    assert "selhn experiment --data" in markdown and "| hardest+warmup |" in markdown

    # a second call reuses the finished runs: nothing is trained again
    capsys.readouterr()
    assert main([*argv, "--no-progress", *tiny]) == 0
    assert "[experiment]" not in capsys.readouterr().out
    # finished runs trained otherwise than asked are refused, not reported as the new settings
    assert main([*argv, "--no-progress", *tiny, "--train.lr=1e-3"]) == 2
    refused = capsys.readouterr().err
    assert "all-seed0/last was trained with (train.lr: 0.0005 -> 0.001)" in refused
