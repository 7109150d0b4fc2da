"""The ledger of benchmarks/real_data.py's loss runs: what is recorded is read back, in order, and
a damaged file is refused with its line."""

import json

import pytest

from selhn.training.run_ledger import FIELDS, RunLedger


def _record(seed, rsum):
    return {"set": "emoji", "loss": "selhn", "false_negatives": "none", "seed": seed,
            "rsum": rsum, "dup_rsum": rsum + 1, "seconds": 60.0 * seed, "resumed": False,
            "vanishing": 0.25, "summary": "best dev rSum 1.0 at epoch 1 of 2",
            "config": {"train.seed": seed}}  # fmt: skip


def test_recorded_runs_are_read_back_by_a_new_ledger(tmp_path):
    path = tmp_path / "results" / "runs.jsonl"
    first = RunLedger(path)
    first.add(_record(0, 300.5))
    first.add(_record(1, 310.25))
    again = RunLedger(path)
    assert again.get(("emoji", "selhn", "none", 1)) == _record(1, 310.25)
    assert again.get(("emoji", "selhn", "none", 2)) is None
    assert again.holds_set("emoji") and not again.holds_set("samples")
    assert [json.loads(line)["seed"] for line in path.read_text().splitlines()] == [0, 1]


def test_a_run_recorded_twice_is_refused(tmp_path):
    ledger = RunLedger(tmp_path / "runs.jsonl")
    ledger.add(_record(0, 300.5))
    with pytest.raises(ValueError, match="emoji selhn none seed 0 is recorded twice"):
        ledger.add(_record(0, 301.0))
    assert len((tmp_path / "runs.jsonl").read_text().splitlines()) == 1


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("{not json", r"runs.jsonl:2: not a JSON object"),
        ("[1, 2]", r"runs.jsonl:2: expected a JSON object, got list"),
        (json.dumps({k: v for k, v in _record(1, 1.0).items() if k != "config"}),
         r"runs.jsonl:2: no config \(a run needs " + ", ".join(FIELDS)),
        (json.dumps(_record(0, 2.0)), r"runs.jsonl:2: emoji selhn none seed 0 is recorded twice"),
    ],
)  # fmt: skip
def test_a_damaged_ledger_names_its_line(tmp_path, line, expected):
    path = tmp_path / "runs.jsonl"
    path.write_text(json.dumps(_record(0, 1.0)) + "\n" + line + "\n")
    with pytest.raises(ValueError, match=expected):
        RunLedger(path)


def test_a_record_without_a_field_is_not_written(tmp_path):
    ledger = RunLedger(tmp_path / "runs.jsonl")
    with pytest.raises(ValueError, match="needs summary"):
        ledger.add({k: v for k, v in _record(0, 1.0).items() if k != "summary"})
    assert not (tmp_path / "runs.jsonl").exists()
