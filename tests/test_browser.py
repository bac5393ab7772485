"""A real browser on the real app: Debian's chromium driven by Playwright opens the page, sends a
message, and sees highlighted draft tokens and the live indicators, at laptop and phone width.
Screenshots land in test-artifacts/ for a person to look at."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from app_process import running_app
from conftest import offline_model

pytestmark = [pytest.mark.slow, pytest.mark.browser]

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture()
def browser():
    if CHROMIUM is None:
        pytest.skip("Debian's chromium is not installed (python3 launcher.py test installs it "
                    "with apt when it can)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"])
        yield instance
        instance.close()


def no_horizontal_overflow(page) -> bool:
    return page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")


def message_box_uncovered(page) -> bool:
    box = page.locator("#tdm-input textarea").bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    return page.evaluate("([x, y]) => document.querySelector('#tdm-input')"
                         ".contains(document.elementFromPoint(x, y))", [x, y])


def test_chat_in_a_real_browser(browser, isolated_home):
    ARTIFACTS.mkdir(exist_ok=True)
    target = offline_model("qwen2.5-coder-1.5b-instruct-q4_k_m")
    draft = offline_model("qwen2.5-coder-0.5b-instruct-q4_k_m")
    with running_app(isolated_home, target, draft) as (url, _):
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(url)
        page.wait_for_selector("#tdm-indicators :text('Ready')", timeout=240_000)

        # a fixed window with the draft model guarantees accepted drafts to highlight
        page.locator("#tdm-settings").get_by_text("Settings").first.click()
        page.get_by_role("radio", name="fixed", exact=True).check()
        page.get_by_role("radio", name="model", exact=True).check()
        page.get_by_label("Highlight accepted draft tokens").check()
        page.locator("#tdm-input textarea").fill(
            "In two sentences, explain what Python's len() does, then show a one-line example "
            "in a code block.")
        page.locator("#tdm-send").click()

        stats = page.locator("#tdm-chat .tdm-stats", has_text="tok/s")
        stats.wait_for(timeout=300_000)
        page.screenshot(path=str(ARTIFACTS / "browser-laptop.png"), full_page=True)
        assert "tok/s" in stats.inner_text()
        assert page.locator("#tdm-chat .tdm-draft").count() > 0, "no highlighted draft tokens"
        assert "</span>" not in page.locator("#tdm-chat").inner_text()  # no tag shows literally
        indicators = page.locator("#tdm-indicators").inner_text().lower()
        assert "acceptance" in indicators and "tokens/s" in indicators
        assert page.locator("#tdm-chat code, #tdm-chat pre").count() > 0  # code renders
        page.screenshot(path=str(ARTIFACTS / "browser-laptop.png"), full_page=True)

        assert page.get_by_text("explain what Python's len() does").count() >= 1

        # a phone-width window: the sidebar starts closed, nothing covers the message box,
        # nothing scrolls sideways
        phone = browser.new_page(viewport={"width": 390, "height": 844})
        phone.goto(url)
        phone.wait_for_selector("#tdm-indicators :text('Ready')", timeout=60_000)
        phone.wait_for_timeout(1500)
        assert message_box_uncovered(phone), "something covers the message box at phone width"
        assert no_horizontal_overflow(phone), "the page scrolls sideways at phone width"
        phone.screenshot(path=str(ARTIFACTS / "browser-phone.png"))
