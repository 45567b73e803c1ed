"""report.html: every finished search writes a self-contained visual report (figures and
thumbnails inline, nothing fetched), user text escaped, written without matplotlib too; a
headless Chromium loads it without errors, decodes every image and takes a screenshot."""

import base64
import io
import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from deft_jax.cli.search import main
from deft_jax.run import figures
from deft_jax.run.report_html import render_html
from deft_jax.runtime import rundir

from helpers import tiny_overrides

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DATA_PNG = re.compile(r"""<img src='data:image/png;base64,([A-Za-z0-9+/=]+)'""")
HOSTILE = ["<script>alert(1)</script>", "a\"b'c&d", "esc\x1b[31m", "ok"]


def decoded_images(page: str) -> list[Image.Image]:
    out = []
    for b64 in DATA_PNG.findall(page):
        img = Image.open(io.BytesIO(base64.b64decode(b64, validate=True)))
        img.load()  # raises on a truncated or corrupt PNG
        out.append(img)
    return out


def assert_self_contained(page: str) -> None:
    """No script, no external reference: every src is a data: PNG, no href, no url()."""
    assert "<script" not in page.lower() and "<link" not in page.lower()
    sources = re.findall(r"\bsrc=['\"]([^'\"]*)", page)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    assert "href=" not in page and "url(" not in page and "@import" not in page
    assert "http://" not in page and "https://" not in page
    assert "default-src 'none'" in page  # the CSP: the browser fetches nothing either


def synthetic_page(**over) -> str:
    rng = np.random.default_rng(0)
    names = list(HOSTILE)
    labels = np.array([0, 1, 2, 3] * 5)
    logits = rng.normal(size=(20, 4))
    logits[np.arange(20), (labels + 1) % 4] += 5.0  # every image misclassified
    cm = np.zeros((4, 4), int)
    np.add.at(cm, (labels, logits.argmax(-1)), 1)
    groups = {"stem": 100, "stage1": 2000, "stage2": 8000, "head": 40}
    memo = {"0001": 0.5, "1111": 0.3, "0101": 0.32, "0011": 0.4, "1001": 0.45}
    history = [{"generation": 0, "best_fitness": 0.3, "mean_fitness": 0.4, "generation_best_fitness": 0.3,
                "distinct_masks_so_far": 3},
               {"generation": 1, "best_fitness": 0.3, "mean_fitness": 0.37, "generation_best_fitness": 0.32,
                "distinct_masks_so_far": 5}]
    args = dict(
        cfg={"search": {"metric": "accuracy", "population_size": 4, "generations": 1, "select": "best"}},
        description="folder <img src=x onerror=alert(1)> 20 images", model="small_cnn",
        pretrained=None, group_sizes=groups, best_mask={"stem": True, "stage1": 0.1, "stage2": False,
                                                         "head": True},
        best_fitness=0.3, history=history, memo=memo, memo_short={"1001": 1},
        metrics={"trainable_fraction": 0.21, "test": {"n": 20, "accuracy": 0.5, "macro_f1": 0.5,
                                                       "confusion_matrix": cm.tolist(),
                                                       "per_class_recall": dict.fromkeys(names, 0.5)},
                 "val": {"n": 10, "accuracy": 0.7, "macro_f1": 0.6}},
        class_names=names, split_sizes={"train": 40, "val": 10, "test": 20}, seconds={"total": 3.0},
        test_images=rng.integers(0, 255, (20, 16, 16, 3), dtype=np.uint8), test_labels=labels,
        test_logits=logits, test_ids=np.array([f"cls/<b>{i}.png" for i in range(20)]))
    args.update(over)
    return render_html(**args)


def test_the_page_escapes_user_text_and_inlines_every_image():
    page = synthetic_page()
    assert_self_contained(page)
    assert "<img src=x" not in page and "cls/<b>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "a&quot;b&#x27;c&amp;d" in page
    assert "\x1b" not in page and "esc\\x1b[31m" in page
    assert "cls/&lt;b&gt;" in page  # sample ids (file paths) too
    images = decoded_images(page)
    assert len(images) == 2 + 12  # fitness, Pareto, the 12 most confident of 20 mistakes
    assert all(im.width > 0 and im.height > 0 for im in images)
    assert "x0.1 lr" in page and "frozen" in page  # the layer-group strip


def test_without_matplotlib_the_page_is_written_and_says_so(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    assert figures.figure_factory() is None
    page = synthetic_page()
    assert_self_contained(page)
    assert page.count("matplotlib is not installed") == 2
    assert len(decoded_images(page)) == 12  # the thumbnails need only Pillow


def test_each_memo_entry_is_placed_at_the_generation_it_was_first_evaluated():
    history = [{"generation": 0, "distinct_masks_so_far": 4}, {"generation": 1, "distinct_masks_so_far": 4},
               {"generation": 2, "distinct_masks_so_far": 6}]
    assert figures.generation_of_entries(history, 6) == [0, 0, 0, 0, 2, 2]
    assert figures.generation_of_entries([{"generation": 0}], 2) is None


def test_thumbnails_keep_small_images_pixelated_and_shrink_large_ones():
    small = Image.open(io.BytesIO(figures.thumbnail_png(np.zeros((16, 16, 3), np.uint8))))
    large = Image.open(io.BytesIO(figures.thumbnail_png(np.zeros((300, 150, 3), np.uint8))))
    assert small.size == (96, 96) and large.size == (48, 96)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("html") / "run"
    assert main(["--out", str(run), "--set", *tiny_overrides()]) == 0
    return run


def test_a_finished_search_writes_a_self_contained_report_html(finished_run):
    page = (finished_run / rundir.REPORT_HTML).read_text()
    assert_self_contained(page)
    metrics = json.loads((finished_run / rundir.METRICS).read_text())
    best = json.loads((finished_run / rundir.BEST).read_text())
    assert f"accuracy <b>{metrics['test']['accuracy']:.4f}</b>" in page
    assert f"{best['fitness']:.4f}" in page
    for section in ("Search progress", "Chosen layer groups", "Pareto front", "Test confusion matrix",
                    "Misclassified test images"):
        assert section in page
    assert page.count("class='grp") == len(best["mask"])
    images = decoded_images(page)
    assert len(images) >= 2 and all(im.width > 16 for im in images)


def chromium(*args: str, user_data) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={user_data}"]
    return subprocess.run([CHROMIUM, *flags, *args], capture_output=True, text=True, timeout=120)


# counts errors and CSP violations from the start, then checks every image once loaded
PROBE_HEAD = ("<script>window.__errors=0;addEventListener('error',function(){window.__errors++},true);"
              "addEventListener('securitypolicyviolation',function(){window.__errors++});</script>")
PROBE_END = ("<script>addEventListener('load',function(){var i=Array.from(document.images);"
             "var bad=i.filter(function(x){return !(x.complete&&x.naturalWidth>0)}).length;"
             "document.body.setAttribute('data-probe','images='+i.length+' bad='+bad+' errors='+window.__errors)"
             "});</script>")


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_a_headless_browser_renders_the_report_and_decodes_every_image(finished_run, tmp_path):
    page = (finished_run / rundir.REPORT_HTML).read_text()
    shot = tmp_path / "shot.png"
    done = chromium(f"--screenshot={shot}", "--window-size=1200,2000",
                    (finished_run / rundir.REPORT_HTML).resolve().as_uri(), user_data=tmp_path / "profile")
    assert done.returncode == 0, done.stderr[-2000:]
    assert shot.is_file() and shot.stat().st_size > 20_000
    with Image.open(shot) as im:
        assert im.size == (1200, 2000)
        pixels = np.asarray(im.convert("RGB").resize((120, 200))).reshape(-1, 3)
        assert len(np.unique(pixels, axis=0)) > 50  # not a blank page

    # the same page with a probe: inline scripts allowed, every other rule of its CSP kept
    probed = page.replace("default-src 'none';", "default-src 'none'; script-src 'unsafe-inline';", 1)
    probed = probed.replace("<head>", "<head>" + PROBE_HEAD, 1).replace("</body>", PROBE_END + "</body>", 1)
    copy = tmp_path / "probed.html"
    copy.write_text(probed)
    dom = chromium("--dump-dom", "--virtual-time-budget=5000", copy.as_uri(), user_data=tmp_path / "profile")
    assert dom.returncode == 0, dom.stderr[-2000:]
    found = re.search(r'data-probe="images=(\d+) bad=(\d+) errors=(\d+)"', dom.stdout)
    assert found, dom.stdout[-2000:]
    assert int(found[1]) == len(decoded_images(page)) >= 2
    assert (found[2], found[3]) == ("0", "0")
