"""The web page in a real headless Chromium (Debian's ``chromium`` + ``chromium-driver``,
driven by selenium): upload, ask, the overlay is drawn, a follow-up, an error message.

Offline-safe: the browser runs with networking features off and talks to 127.0.0.1 only;
selenium is given the driver path, so Selenium Manager (which downloads) never runs.
"""

from __future__ import annotations

import shutil
import tempfile

import pytest
from PIL import Image

from medisee.serve.app import create_app
from medisee.serve.settings import ServeSettings
from tests.inference.helpers import png_bytes, sample_image
from tests.serve.conftest import live_server

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
DRIVERS = ("chromedriver", "/usr/lib/chromium/chromedriver")
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-extensions",
    "--disable-component-update",
    "--disable-sync",
    "--disable-background-networking",
    "--disable-default-apps",
    "--disable-features=Translate,OptimizationHints,MediaRouter",
    "--no-first-run",
    "--no-default-browser-check",
    "--window-size=1200,900",
)


def _which(names: tuple[str, ...]) -> str | None:
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture
def browser():
    chromium, driver_path = _which(BROWSERS), _which(DRIVERS)
    if chromium is None or driver_path is None:
        pytest.skip(
            "needs Chromium and its driver: apt-get install -y chromium chromium-driver "
            f"(found browser={chromium}, driver={driver_path})"
        )
    # A hard dependency of this test (dev extra): an ImportError here is a real failure.
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="medisee-chromium-")
    options.add_argument(f"--user-data-dir={profile}")
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _green_pixels(driver) -> int:
    return driver.execute_script(
        """
        const c = document.getElementById('overlay');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0;
        for (let i = 0; i < d.length; i += 4) {
          if (d[i] === 64 && d[i + 1] === 255 && d[i + 2] === 64) n++;
        }
        return n;
        """
    )


def test_upload_ask_see_overlay_and_follow_up(browser, echo, tmp_path):
    from fastapi.testclient import TestClient
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    pixels = sample_image(40, 60, seed=5)
    image_path = tmp_path / "scan.png"
    Image.fromarray(pixels).save(image_path)
    (tmp_path / "notes.txt").write_text("not an image at all " * 20)
    settings = ServeSettings(max_new_tokens=8)
    # What the API answers for this image: the page must draw exactly that mask.
    with TestClient(create_app(echo, settings)) as client:
        expected = client.post(
            "/v1/predict",
            files={"image": ("scan.png", png_bytes(pixels))},
            data={"question": "Which organ filters the blood?"},
        ).json()

    with live_server(create_app(echo, settings)) as base_url:
        browser.get(base_url + "/")
        assert browser.title == "medisee"
        wait = WebDriverWait(browser, 30)
        canvas = browser.find_element(By.ID, "overlay")
        assert canvas.get_attribute("data-state") == "empty"

        browser.find_element(By.ID, "ask").click()  # nothing typed yet
        assert browser.find_element(By.ID, "status").text == "Type a question."

        browser.find_element(By.ID, "image-file").send_keys(str(image_path))
        browser.find_element(By.ID, "question").send_keys("Which organ filters the blood?")
        browser.find_element(By.ID, "ask").click()
        wait.until(lambda d: canvas.get_attribute("data-state") == "drawn")

        assert canvas.is_displayed() and canvas.get_attribute("data-turn") == "1"
        assert not browser.find_element(By.ID, "placeholder").is_displayed()
        assert (int(canvas.get_attribute("width")), int(canvas.get_attribute("height"))) == (
            480,
            320,
        )  # 60 x 40 enlarged 8x
        mask_pixels = int(canvas.get_attribute("data-mask-pixels"))
        assert mask_pixels == expected["scores"]["mask_pixels"]
        assert _green_pixels(browser) > 0  # the box is drawn
        answer = browser.find_element(By.ID, "answer").text
        assert answer == expected["text"] and answer.startswith("Echo: Which organ filters")
        assert "box (pixels, original image)" in browser.find_element(By.ID, "box-text").text

        browser.find_element(By.ID, "question").send_keys("What is next to it?")
        browser.find_element(By.ID, "ask").click()
        wait.until(lambda d: canvas.get_attribute("data-turn") == "2")
        turns = browser.find_elements(By.CSS_SELECTOR, "#log li")
        assert len(turns) == 2 and "Echo: What is next to it?" in turns[1].text

        # A file that is not an image: the server's message is shown, the page still works.
        browser.find_element(By.ID, "image-file").send_keys(str(tmp_path / "notes.txt"))
        browser.find_element(By.ID, "question").send_keys("And this?")
        browser.find_element(By.ID, "ask").click()
        status = browser.find_element(By.ID, "status")
        wait.until(lambda d: status.text.startswith("Error"))
        assert "415" in status.text and "not an image" in status.text
        assert canvas.get_attribute("data-turn") == "2"
