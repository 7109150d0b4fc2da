"""The examples run as shipped and show what they say they show."""

import re
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_plug_and_play_shows_hardest_negatives_collapse_and_selhn_learn():
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "plug_and_play.py")],
        capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    recalls = [
        (float(i2t), float(t2i))
        for i2t, t2i in re.findall(r"R@1 image->text ([\d.]+)%  text->image ([\d.]+)%", done.stdout)
    ]
    vanishing = re.findall(r"step 1000  loss ([\d.]+)  vanishing i2t ([\d.]+)", done.stdout)
    assert len(recalls) == 2 and len(vanishing) == 2, done.stdout
    (hardest, selhn), (hardest_end, selhn_end) = recalls, vanishing
    assert max(hardest) < 1.0  # chance is 0.1% on 1,000 items
    assert min(selhn) > 40.0
    assert float(hardest_end[1]) == 1.0 and float(selhn_end[1]) < 0.2
    assert float(selhn_end[0]) > 0.0  # the task is not trivially easy
