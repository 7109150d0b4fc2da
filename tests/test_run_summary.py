import json

from selhn.training import report
from selhn.training.run_dir import read_records, run_summary


def _write_log(run, records):
    run.mkdir()
    (run / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def _step(epoch, objective, i2t, t2i):
    return {"type": "step", "epoch": epoch, "step": epoch * 10, "objective": objective,
            "loss": 1.0, "vanishing_i2t": i2t, "vanishing_t2i": t2i}  # fmt: skip


def _eval(epoch, rsum):
    return {"type": "eval", "epoch": epoch, "step": epoch * 10 + 9, "split": "dev", "rsum": rsum}


def test_run_summary_reports_the_best_dev_epoch_and_the_vanishing_peak_after_the_warm_up(tmp_path):
    run = tmp_path / "run"
    _write_log(run, [
        _step(1, "all", 0.9, 0.9),  # the warm-up epoch of the mean loss: left out
        _eval(1, 100.0),
        _step(2, "hardest", 0.2, 0.4),
        _eval(2, 150.5),
        _step(3, "hardest", 0.6, 0.2),
        _eval(3, 120.0),
    ])  # fmt: skip
    # best 150.5 at epoch 2; 3 epochs; peak of (0.2+0.4)/2=0.3 and (0.6+0.2)/2=0.4
    assert run_summary(run) == "best dev rSum 150.5 at epoch 2 of 3; vanishing peak 0.40"


def test_a_log_of_selhn_0_1_0_is_read_with_epochs_numbered_from_1(tmp_path):
    run = tmp_path / "run"
    _write_log(run, [_step(0, "hardest", 0.2, 0.4), _eval(0, 150.5), _eval(1, 120.0)])
    assert [r["epoch"] for r in read_records(run / "log.jsonl")] == [1, 1, 2]
    assert run_summary(run) == "best dev rSum 150.5 at epoch 1 of 2; vanishing peak 0.30"


def test_run_summary_of_a_loss_without_gaps_has_no_vanishing_share(tmp_path):
    run = tmp_path / "run"
    steps = [{"type": "step", "epoch": e, "step": e, "objective": "infonce", "loss": 1.0}
             for e in (1, 2)]  # fmt: skip
    _write_log(run, [steps[0], _eval(1, 80.0), steps[1], _eval(2, 70.0)])
    assert run_summary(run) == "best dev rSum 80.0 at epoch 1 of 2"


def test_run_summary_of_the_mean_loss_counts_its_own_steps(tmp_path):
    run = tmp_path / "run"
    _write_log(run, [_step(1, "all", 0.1, 0.3), _eval(1, 90.0), _step(2, "all", 0.5, 0.1),
                     _eval(2, 95.0)])  # fmt: skip
    # no warm-up: every step is the run's loss; peak of (0.1+0.3)/2=0.2 and (0.5+0.1)/2=0.3
    assert run_summary(run) == "best dev rSum 95.0 at epoch 2 of 2; vanishing peak 0.30"


def test_the_time_left_says_when_early_stopping_would_end_the_run(monkeypatch):
    now = iter(range(0, 1000, 10))  # every epoch takes 10 s
    monkeypatch.setattr(report.time, "perf_counter", lambda: float(next(now)))
    clock = report.EpochClock(epochs=10, patience=3)
    assert (
        clock.lap(0, best_epoch=0)
        == "10 s, at most 2 min left; 30 s if the dev rSum does not improve"
    )
    assert (
        clock.lap(1, best_epoch=0)
        == "10 s, at most 80 s left; 20 s if the dev rSum does not improve"
    )
    assert clock.lap(7, best_epoch=7) == "10 s, about 20 s left"  # the patience outlasts the run
    assert clock.lap(9, best_epoch=7) == "10 s"
    plain = report.EpochClock(epochs=200)
    assert plain.lap(0, best_epoch=0) == "10 s, about 33 min left"
