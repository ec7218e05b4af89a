"""The web gallery in a real browser (Debian's chromium + chromium-driver through selenium): type a
query, upload an image, run a composed search, and check the grid. Skipped where chromium is absent."""

import shutil
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER), reason="chromium and chromedriver are not installed "
                                "(apt-get install chromium chromium-driver)")
WAIT_S = 60


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def server_url(tiny_index: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The app under uvicorn on a free loopback port, in a thread of this process."""
    import uvicorn

    from unifashion_core.serve.app import create_app
    from unifashion_core.serve.settings import ServeSettings

    index = tmp_path_factory.mktemp("gallery") / "index"
    shutil.copytree(tiny_index, index)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(ServeSettings(index=index, port=port, generate=False)),
                                           host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        thread.join(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(30)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory, monkeypatch_module: pytest.MonkeyPatch) -> Iterator:
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    monkeypatch_module.setenv("SE_OFFLINE", "true")  # selenium-manager must not look for drivers online
    options = Options()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1280,900",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def monkeypatch_module() -> Iterator[pytest.MonkeyPatch]:
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def wait_for_results(driver, mode: str) -> list:
    """The result cards once the grid shows a search of ``mode`` with every thumbnail loaded."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def ready(d):
        grid = d.find_element(By.ID, "results")
        cards = grid.find_elements(By.CSS_SELECTOR, ".card")
        loaded = cards and all(d.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0",
                                                card.find_element(By.CSS_SELECTOR, ".thumb")) for card in cards)
        return cards if grid.get_attribute("data-mode") == mode and loaded else False

    # a check that overlaps the grid being redrawn (the previous search's cards replaced) sees stale
    # cards: it polls again rather than failing
    wait = WebDriverWait(driver, WAIT_S, ignored_exceptions=(StaleElementReferenceException,))
    return wait.until(ready, message=f"no {mode} results; status: {driver.find_element(By.ID, 'status').text!r}")


def check_cards(cards: list, k: int) -> None:
    from selenium.webdriver.common.by import By

    assert len(cards) == k
    scores = [float(card.find_element(By.CSS_SELECTOR, ".score").text) for card in cards]
    assert scores == sorted(scores, reverse=True)
    for card in cards:
        assert card.find_element(By.CSS_SELECTOR, ".caption").text.strip()
        assert card.find_element(By.CSS_SELECTOR, ".thumb").get_attribute("src").endswith("/image")


def test_search_upload_and_composed_search_in_a_browser(browser, server_url: str, tiny_phase1: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    browser.get(server_url)
    WebDriverWait(browser, WAIT_S).until(lambda d: "items" in d.find_element(By.ID, "catalogue").text)
    Select(browser.find_element(By.ID, "k")).select_by_visible_text("8")
    browser.find_element(By.ID, "query-text").send_keys("red striped shirt")
    browser.find_element(By.ID, "search-button").click()
    check_cards(wait_for_results(browser, "t2i"), 8)

    image = next(iter(sorted((tiny_phase1 / "data" / "images").rglob("*.png"))))
    browser.find_element(By.ID, "query-image").send_keys(str(image))
    WebDriverWait(browser, WAIT_S).until(lambda d: d.find_element(By.ID, "query-preview").is_displayed())
    browser.find_element(By.ID, "change-text").send_keys("in blue with long sleeves")
    browser.find_element(By.ID, "change-button").click()
    cards = wait_for_results(browser, "cir")
    check_cards(cards, 8)
    # a phase-1 checkpoint: the zero-shot score, named on the page
    assert "(cir, zero-shot (image weight 0.4))" in browser.find_element(By.ID, "status").text

    first = cards[0].get_attribute("data-id")
    cards[0].find_element(By.CSS_SELECTOR, ".more").click()  # more like this: the item's stored vectors
    check_cards(wait_for_results(browser, "i2i"), 8)
    browser.find_element(By.CSS_SELECTOR, f'.card[data-id="{first}"] .use').click()  # pick it as the query image
    browser.find_element(By.ID, "caption-button").click()
    WebDriverWait(browser, WAIT_S).until(lambda d: d.find_element(By.ID, "caption-output").text.strip())
    browser.find_element(By.ID, "filter").send_keys("fabric=silk")  # the server's error reaches the page
    browser.find_element(By.ID, "search-button").click()
    WebDriverWait(browser, WAIT_S).until(lambda d: "error" in d.find_element(By.ID, "status").get_attribute("class"))
    assert "cannot filter on 'fabric'" in browser.find_element(By.ID, "status").text
