"""The report as a person sees it: headless Chromium at 1280 px shows no horizontal scroll and no empty figure."""
import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
WIDTH = 1280
# the flags a sandboxed, offline machine needs (no GPU, no background connections, a private profile)
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars"]
# written into the page's title once it has laid out: the page's width, and each figure's size as drawn
PROBE = """<script>addEventListener('load', () => {
  const figs = [...document.images].map(i => `${i.naturalWidth}x${i.naturalHeight}@${i.getBoundingClientRect().width}`);
  document.title = `scroll=${document.documentElement.scrollWidth} view=${innerWidth} figs=${figs.join(',')}`;
});</script></head>"""


def chromium(*args, profile):
    return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", f"--window-size={WIDTH},900",
                           "--virtual-time-budget=5000", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_the_report_fits_1280_px_and_every_figure_has_content(tiny_search, tmp_path):
    folder, _ = tiny_search
    page = (folder / "report" / "report.html").read_text()
    probed = tmp_path / "report.html"
    probed.write_text(page.replace("</head>", PROBE, 1))
    dom = chromium("--dump-dom", probed.as_uri(), profile=tmp_path / "profile").stdout
    found = re.search(r"<title>scroll=(\d+) view=(\d+) figs=([^<]*)</title>", dom)
    assert found, dom[-2000:]
    scroll, view, figs = int(found[1]), int(found[2]), found[3].split(",")
    assert view == WIDTH and scroll <= view, f"the page is {scroll} px wide in a {view} px window"
    assert len(figs) == page.count("<img") > 0
    for fig in figs:
        size, drawn = fig.split("@")
        width, height = map(int, size.split("x"))
        assert width > 0 and height > 0 and 0 < float(drawn) <= view, fig
    for png in (folder / "report").glob("*.png"):  # a figure drawn with nothing on it is one flat colour
        pixels = np.asarray(Image.open(png).convert("L"), dtype=float)
        assert pixels.std() > 5, f"{png.name} is empty"
    shot = tmp_path / "report.png"
    chromium(f"--screenshot={shot}", probed.as_uri(), profile=tmp_path / "profile")
    assert Image.open(shot).size[0] == WIDTH
