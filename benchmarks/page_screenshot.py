"""A screenshot of the search page of a running service, after the searches a person would make there.

Opens the page in headless Chromium (Debian's `chromium` and `chromium-driver`, through selenium: the
`test` extra), clicks a catalogue item (loading more pages of the catalogue until it is there), changes
the attributes named by --set one after the other, ticks "only items with the changed values" with
--only, and saves the window. Prints the summary line and, per result, its id, frame and whether it has
each changed value, so that a caption can say what the picture shows.

    python -m experiments.serve --export_dir=exports/synthetic/1 --index=indexes/gallery.npz &
    python benchmarks/page_screenshot.py --url=http://127.0.0.1:8000 --item=synthetic_000123 \
        --set=collar=turtleneck [--only] --out=docs/search_page_main_job.png

docs/search_page.png is made by tests/test_page.py (FSN_SCREENSHOT=path).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import urllib.request

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def driver(user_data_dir: str, width: int, height: int):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                f"--window-size={width},{height}", f"--user-data-dir={user_data_dir}"):  # fmt: skip
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)


def settled(browser, summary_part: str, timeout: float = 120):
    """Waits until no search is in flight and the summary line mentions `summary_part`."""
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(browser, timeout).until(
        lambda d: (
            d.execute_script("return document.body.dataset.busy === undefined")
            and summary_part in d.find_element("id", "summary").text
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="a running experiments.serve")
    parser.add_argument("--item", required=True, help="the catalogue item to click (an id from GET /items)")
    parser.add_argument("--set", action="append", default=[], help="ATTRIBUTE=VALUE, repeatable, in order")
    parser.add_argument("--only", action="store_true", help='tick "only items with the changed values"')
    parser.add_argument("--out", required=True, help="the PNG to write")
    parser.add_argument("--size", default="1400x907", help="window WIDTHxHEIGHT in pixels")
    args = parser.parse_args()
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        parser.exit(
            2, f"error: needs {CHROMIUM} and {CHROMEDRIVER}: apt-get install -y chromium chromium-driver\n"
        )
    changes = []
    for setting in args.set:
        name, sep, value = setting.partition("=")
        if not sep or not name or not value:
            parser.error(f"--set {setting!r} is not ATTRIBUTE=VALUE")
        changes.append((name, value))
    try:
        width, height = (int(x) for x in args.size.split("x"))
    except ValueError:
        parser.error(f"--size {args.size!r} is not WIDTHxHEIGHT")
    try:
        with urllib.request.urlopen(f"{args.url}/items/{urllib.request.quote(args.item, safe='')}") as r:
            json.loads(r.read())
    except OSError as e:
        parser.exit(2, f"error: {args.url} has no item {args.item!r} or is not running ({e})\n")

    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    browser = driver(profile, width, height)
    try:
        browser.get(args.url + "/")
        WebDriverWait(browser, 120).until(
            lambda d: d.execute_script("return document.body.dataset.ready === '1'")
        )
        selector = f'.catalogue-item[data-id="{args.item}"]'
        while not browser.find_elements(By.CSS_SELECTOR, selector):
            shown = len(browser.find_elements(By.CSS_SELECTOR, ".catalogue-item"))
            if not browser.find_element(By.ID, "more").is_displayed():
                parser.exit(2, f"error: item {args.item!r} is not in the page's catalogue\n")
            browser.find_element(By.ID, "more").click()
            WebDriverWait(browser, 60).until(
                lambda d, n=shown: len(d.find_elements(By.CSS_SELECTOR, ".catalogue-item")) > n
            )
        browser.find_element(By.CSS_SELECTOR, selector).click()
        settled(browser, "no change")
        for name, value in changes:
            Select(browser.find_element(By.CSS_SELECTOR, f'select[data-attribute="{name}"]')).select_by_value(
                value
            )
            settled(browser, f"→ {value}")
        if args.only:
            browser.find_element(By.ID, "only-changed").click()
            settled(browser, "only items with")
        browser.execute_script("window.scrollTo(0, 0)")
        browser.save_screenshot(args.out)
        print(browser.find_element(By.ID, "summary").text)
        for card in browser.find_elements(By.CSS_SELECTOR, "#results .result"):
            has = {
                name: card.find_element(By.CSS_SELECTOR, f'li[data-attribute="{name}"] .value').text == value
                for name, value in changes
            }
            print(card.get_attribute("data-id"), card.get_attribute("data-frame"), has)
        print(f"wrote {args.out}", file=sys.stderr)
    finally:
        browser.quit()
        shutil.rmtree(profile, ignore_errors=True)


if __name__ == "__main__":
    main()
