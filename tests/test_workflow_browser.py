"""The labelling page driven as a person uses it: headless Chromium (Debian's `chromium` and
`chromium-driver` packages; `.ci/run` installs them) through Selenium, against real server processes.

Skipped only when no Chromium binary exists. `EMBEDCACHE_SCREENSHOT=docs/label-page.png` makes the
demo test save its screenshot there (that is how the README's picture is made).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from workflow_helpers import write_pool

from embedcache.workflow.labels import read_labels
from embedcache.workflow.suggest import suggest
from embedcache.workflow.workspace import Workspace

CHROMIUM = next((p for p in (shutil.which("chromium"), shutil.which("chromium-browser"), "/usr/bin/chromium")
                 if p and Path(p).is_file()), None)
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium binary: `apt-get install chromium "
                                                          "chromium-driver` (what .ci/run does) runs these tests")
CLASSES = ("negative", "positive")
INJECTION = '<script>window.pwned=1</script><img src=x onerror="window.pwned=2">'


@pytest.fixture
def browser(tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver", reason="pip install -e '.[dev]' installs selenium")
    from selenium.webdriver.chrome.service import Service

    if not Path(CHROMEDRIVER).is_file():
        pytest.fail("chromium is installed but chromedriver is not: apt-get install chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     f"--user-data-dir={tmp_path / 'chromium-profile'}", "--window-size=1280,860",
                     "--force-device-scale-factor=1"):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


class Server:
    """`embedcache <args> --port 0` in a subprocess; the URL is read from its first line of output."""

    def __init__(self, *args: str, timeout: float = 300):
        self.process = subprocess.Popen([sys.executable, "-m", "embedcache.cli", *args, "--port", "0"],
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = ""
        while not line.startswith("Labelling page:"):
            line = self.process.stdout.readline()
            if not line and self.process.poll() is not None:
                raise AssertionError(f"the server stopped: {self.process.stderr.read()[-3000:]}")
        self.url = line.split()[2]

    def stop(self) -> None:
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _wait(driver, condition, timeout: float = 60):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(lambda d: condition(d))


def _body(driver, name: str) -> str:
    return driver.find_element("tag name", "body").get_attribute(f"data-{name}") or ""


def _press(driver, key: str) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(driver).send_keys(key).perform()


def _open(driver, url: str) -> None:
    driver.get(url)
    _wait(driver, lambda d: _body(d, "ready") == "1")


def _label_by_keyboard(driver, truth: dict, classes, count: int) -> list[str]:
    """Press the class's number key for the shown example, `count` times; returns the ids labelled."""
    done = []
    for _ in range(count):
        example, labelled = _body(driver, "example"), int(_body(driver, "labelled"))
        _press(driver, str(classes.index(truth[example]) + 1))
        _wait(driver, lambda d: int(_body(d, "labelled")) == labelled + 1 and _body(d, "example") != example)
        done.append(example)
    return done


def test_label_ten_by_keyboard_undo_restart_and_continue(browser, tmp_path):
    cache, truth = write_pool(tmp_path / "pool", n=80)
    labels_path = tmp_path / "labels.csv"
    args = ("label", str(cache), "--labels", str(labels_path), "--split", "train", "--classes", ",".join(CLASSES))
    server = Server(*args)
    try:
        _open(browser, server.url)
        assert browser.find_element("id", "example-text").text.startswith("review ")
        labelled = _label_by_keyboard(browser, truth, CLASSES, 10)
        assert len(set(labelled)) == 10
        _press(browser, "u")
        _wait(browser, lambda d: _body(d, "labelled") == "9")
        assert _body(browser, "example") == labelled[-1]  # the undone example is shown again
        assert "Undid the label" in browser.find_element("id", "status").text
        _press(browser, "?")
        assert browser.find_element("id", "help").is_displayed()
        _press(browser, "?")
        assert not browser.find_element("id", "help").is_displayed()
        counts = browser.find_element("id", "counts").text
        assert all(name in counts for name in CLASSES)
    finally:
        server.stop()
    rows = read_labels(labels_path).rows
    assert [(r.id, r.label) for r in rows[:10]] == [(i, truth[i]) for i in labelled]
    assert (rows[10].id, rows[10].label, rows[10].note) == (labelled[-1], None, "undo") and len(rows) == 11
    # restart: the page continues from the file, showing what `suggest` ranks first
    state = read_labels(labels_path)
    expected = suggest(Workspace(cache, split="train", classes=list(CLASSES)), state, k=5)
    server = Server(*args)
    try:
        _open(browser, server.url)
        assert _body(browser, "labelled") == "9"
        assert _body(browser, "example") == expected.suggestions[0].id
        more = _label_by_keyboard(browser, truth, CLASSES, 2)
    finally:
        server.stop()
    assert more[0] == expected.suggestions[0].id
    assert [r.id for r in read_labels(labels_path).labels()] == labelled[:9] + more


def test_a_caption_with_markup_shows_as_text_and_runs_nothing(browser, tmp_path):
    cache, _ = write_pool(tmp_path / "pool", n=10, texts=[INJECTION] * 10)
    server = Server("label", str(cache), "--labels", str(tmp_path / "labels.csv"), "--classes",
                    '<b>bold</b>,<img src=x onerror="window.pwned=3">')
    try:
        _open(browser, server.url)
        text = browser.find_element("id", "example-text")
        assert text.text == INJECTION
        assert browser.execute_script("return arguments[0].children.length", text) == 0
        buttons = [b.find_element("tag name", "span").text
                   for b in browser.find_elements("css selector", "#classes button")]
        assert buttons == ["<b>bold</b>", '<img src=x onerror="window.pwned=3">']
        assert browser.execute_script("return window.pwned === undefined && document.querySelectorAll("
                                      "'#card script, #card img[onerror], #panel img').length === 0")
    finally:
        server.stop()


def test_an_image_example_loads_from_the_media_folder(browser, tmp_path):
    cache, truth = write_pool(tmp_path / "photos", n=12, images=True)
    server = Server("label", str(cache), "--labels", str(tmp_path / "labels.csv"), "--classes", ",".join(CLASSES),
                    "--media", str(tmp_path / "photos"))
    try:
        _open(browser, server.url)
        image = browser.find_element("id", "example-image")
        _wait(browser, lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", image))
        assert image.is_displayed() and browser.execute_script("return arguments[0].naturalWidth", image) == 8
        assert image.get_attribute("src").endswith(f"/media/images/{_body(browser, 'example')}.png")
        _label_by_keyboard(browser, truth, CLASSES, 2)
    finally:
        server.stop()


@pytest.mark.slow
def test_demo_label_page_on_the_generated_reviews(browser, tmp_path, minilm_path):
    """`embedcache demo --label` with the real MiniLM: label a handful; the screenshot is the README's."""
    out = tmp_path / "demo"
    server = Server("demo", "--label", "--quick", "--out", str(out))
    try:
        reviews = [json.loads(line) for line in (out / "data" / "reviews.jsonl").read_text().splitlines()]
        truth = {r["id"]: r["label"] for r in reviews}
        _open(browser, server.url)
        buttons = browser.find_elements("css selector", "#classes button")
        assert [b.get_attribute("data-label") for b in buttons] == list(CLASSES)
        labelled = _label_by_keyboard(browser, truth, CLASSES, 48)
        assert browser.find_element("id", "groups").text.startswith("category")
        shot = tmp_path / "label-page.png"
        browser.save_screenshot(str(shot))
        target = os.environ.get("EMBEDCACHE_SCREENSHOT")
        if target:  # 64 colours: a third of the bytes, and the page looks the same
            from PIL import Image

            with Image.open(shot) as image:
                image.convert("RGB").quantize(64, dither=Image.Dither.NONE).save(target, optimize=True)
    finally:
        server.stop()
    state = read_labels(out / "labels-quick.csv")
    assert [r.id for r in state.labels()] == labelled
    category = {r["id"]: r["category"] for r in reviews}
    mismatched = {("negative", "books"), ("positive", "kitchen")}
    # the pool has 5 % of them, so 24 random picks hold about 1 (4 or more: p = 0.03); least-confidence on
    # MiniLM features asks for 7 of them in its second 24 labels (3 in the first 24)
    assert sum((truth[i], category[i]) in mismatched for i in labelled[24:]) >= 4
