"""The page at `/` of `adapterlab serve` in a real headless browser (Debian's chromium and chromium-driver, driven by
selenium): pick two adapters, submit a prompt, and both streamed answers equal the API's greedy answers."""

from __future__ import annotations

import os
import shutil

import httpx
import pytest
from serve_helpers import Server, save_adapters, save_model

INSTALL = "install them with `apt-get install -y chromium chromium-driver` (`make test` does, as root)"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is missing: pip install -e '.[test]'")
if not (CHROMIUM and DRIVER):  # CI (CI=true) must run the page test, so there a missing browser is a failure
    if os.environ.get("CI") == "true":
        pytest.fail(f"chromium or chromedriver is missing on CI; {INSTALL}", pytrace=False)
    pytest.skip(f"chromium or chromedriver is missing; {INSTALL}", allow_module_level=True)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve-page")
    model = save_model(root / "model", context=256)
    adapters = save_adapters(model, root / "adapters")
    server = Server("--model", str(model), "--adapter", f"lora={adapters['lora']}", "--adapter",
                    f"ia3={adapters['ia3']}")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser():
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    yield driver
    driver.quit()


def test_page_streams_two_adapters_side_by_side(server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    prompt = "Tell me about adapters."
    want = {}
    for name in ("lora", "ia3"):
        body = {"model": name, "prompt": prompt, "max_tokens": 20, "temperature": 0}
        want[name] = httpx.post(server.url + "/v1/completions", json=body, timeout=60).json()["choices"][0]["text"]
    assert want["lora"] != want["ia3"]
    browser.get(server.url + "/")
    wait = WebDriverWait(browser, 60)
    wait.until(lambda b: b.find_elements(By.ID, "model-ia3"))
    assert [e.get_attribute("value") for e in browser.find_elements(By.NAME, "model")] == ["base", "lora", "ia3"]
    browser.find_element(By.ID, "model-lora").click()
    browser.find_element(By.ID, "model-ia3").click()
    browser.find_element(By.ID, "prompt").send_keys(prompt)
    tokens = browser.find_element(By.ID, "max_tokens")
    tokens.clear()
    tokens.send_keys("20")
    browser.find_element(By.ID, "submit").click()
    wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, ".answer[data-done]")) == 2)
    panels = browser.find_elements(By.CSS_SELECTOR, ".answer")
    got = {p.get_attribute("data-model"): p.find_element(By.CSS_SELECTOR, "pre").get_attribute("textContent")
           for p in panels}
    assert [p.get_attribute("data-done") for p in panels] == ["true", "true"]
    assert got == want
