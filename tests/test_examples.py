"""The examples run as shipped and show what they say they show."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.subprocess]


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


@pytest.mark.browser
def test_search_photos_indexes_the_samples_and_finds_an_upload_first_in_chromium(tmp_path):
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "search_photos.py"), "--small", "--work", str(tmp_path),
         "--screenshot", str(tmp_path / "page.png")],
        capture_output=True, text=True, timeout=600, check=True,
    )  # fmt: skip
    text = re.search(r"^a cup of coffee: (.+)$", done.stdout, re.M)
    upload = re.search(r"^chelsea\.png: (.+)$", done.stdout, re.M)
    assert text and upload, done.stdout + done.stderr[-3000:]
    assert len(text.group(1).split(", ")) == 3
    assert upload.group(1).split(", ")[0] == "chelsea.png"  # the uploaded image finds itself
    assert "images indexed" in done.stdout + done.stderr
    assert (tmp_path / "page.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
