"""Search a folder of photos from a web page: the whole path on the packaged sample images.

    selhn data samples   -> real images and captions (skimage photos, sklearn digit pairs)
    selhn features       -> backbone features of the captioned images
    selhn train          -> the probe model (seconds; drop --architecture probe for RVSE++)
    selhn index          -> every image of the folder, captions or not
    selhn serve          -> the page, driven here in headless Chromium: a text query, then an
                            uploaded image; with --screenshot, a picture of the page

Usage: python examples/search_photos.py [--work DIR] [--screenshot page.png] [--small]
(--small: 64 px images and fewer digit pairs, for a quick check; the page needs Debian's
chromium and chromium-driver.)
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

QUERY = "a cup of coffee"


def selhn(*args: str) -> None:
    """``selhn ARGS``, in this process (the server alone runs in its own)."""
    from selhn.cli import main

    print("$ selhn " + " ".join(args), flush=True)
    if main(list(args)) != 0:
        raise SystemExit(f"selhn {args[0]} failed")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def browse(url: str, upload: Path, screenshot: Path | None) -> None:
    """Search by text and by an uploaded image in headless Chromium; print the top results."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--window-size=1200,760"):  # fmt: skip
        options.add_argument(flag)
    browser = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    try:
        browser.get(url)
        wait = WebDriverWait(browser, 60)

        def shown(what: str) -> None:
            wait.until(lambda b: what in b.find_element(By.ID, "status").text)
            hits = browser.find_elements(By.CSS_SELECTOR, "#results .hit")[:3]
            print(f"{what}: " + ", ".join(Path(h.get_attribute("data-file")).name for h in hits))

        browser.find_element(By.ID, "query").send_keys(QUERY)
        browser.find_element(By.ID, "search").click()
        shown(QUERY)
        if screenshot is not None:
            wait.until(lambda b: b.execute_script(
                "return [...document.images].every((i) => i.complete && i.naturalWidth > 0)"
            ))  # fmt: skip
            browser.save_screenshot(str(screenshot))
            print(f"wrote {screenshot}")
        browser.find_element(By.ID, "upload").send_keys(str(upload))
        shown(upload.name)
    finally:
        browser.quit()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", help="folder for the data, the run and the index")
    parser.add_argument("--screenshot", type=Path, help="save a PNG of the page here")
    parser.add_argument("--small", action="store_true", help="64 px, 60 digit pairs")
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="search_photos."))
    size = ["--train", "40", "--dev", "10", "--test", "10"] if args.small else []
    selhn("data", "samples", "--out", str(work / "photos"), *size)
    pixels = ["--image-size", "64"] if args.small else []
    manifest = str(work / "photos" / "manifest.jsonl")
    selhn("features", "--manifest", manifest, "--out", str(work / "features"), *pixels,
          "--no-progress")  # fmt: skip
    selhn("train", "--data", str(work / "features"), "--out", str(work / "run"),
          "--architecture", "probe", "--no-progress")  # fmt: skip
    images = str(work / "photos" / "images")
    selhn("index", "--checkpoint", str(work / "run" / "best"), "--images", images,
          "--out", str(work / "index"), "--no-progress")  # fmt: skip
    port = free_port()
    command = [sys.executable, "-m", "selhn", "serve", "--index", str(work / "index")]
    server = subprocess.Popen([*command, "--port", str(port)])
    try:
        url = f"http://127.0.0.1:{port}/"
        for _ in range(240):
            try:
                urllib.request.urlopen(url + "api/info", timeout=5)
                break
            except OSError:
                time.sleep(0.5)
        browse(url, work / "photos" / "images" / "chelsea.png", args.screenshot)
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
