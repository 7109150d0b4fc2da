"""Progress off a terminal: a line at a steady interval with the count, the share and the time
left; nothing at all when disabled."""

from selhn.utils.progress import Progress, tracked


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_off_a_terminal_a_line_comes_every_interval(capsys):
    clock = Clock()
    progress = Progress("features train", 100, "images", interval=30.0, clock=clock)
    for _ in range(10):  # 10 images every 10 s: a line at 30 s, 60 s, 90 s
        clock.now += 10.0
        progress.advance(10)
    progress.close()
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        "features train: 30/100 images (30%), 30 s, about 70 s left",
        "features train: 60/100 images (60%), 60 s, about 40 s left",
        "features train: 90/100 images (90%), 1.5 min, about 10 s left",
    ]


def test_disabled_progress_prints_nothing_and_tracked_yields_everything(capsys):
    assert list(tracked(range(5), "x", 5, "items", enabled=False)) == [0, 1, 2, 3, 4]
    assert list(tracked([[1, 2], [3]], "x", 3, "items", size=len)) == [[1, 2], [3]]
    assert capsys.readouterr().out == ""
