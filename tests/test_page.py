"""The search page driven as a person would, in real headless Chromium (Debian's `chromium` and
`chromium-driver`, through selenium): open the page, pick a catalogue item, change its colour, and check
that the result grid changed and that results now show the new colour; then upload a photo. Saves a
screenshot (`FSN_SCREENSHOT=path.png` also writes it there; docs/search_page.png is one).

`.ci/run` installs Chromium when it is missing, so CI always runs this test; elsewhere a machine without
Chromium skips it with the install command (and fails under CI=true).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import urllib.request

import cv2
from optional import require
from service_fixture import live_server

from fashionsearchnet_v2.serving import index as index_lib
from fashionsearchnet_v2.serving import service

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
NEW_COLOUR = "green"


def _driver(user_data_dir: str):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--window-size=1400,1050", f"--user-data-dir={user_data_dir}"):  # fmt: skip
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)


def _grid(driver) -> list[tuple[str, str, str]]:
    """(id, colour shown, frame) of every result card."""
    from selenium.webdriver.common.by import By

    out = []
    for card in driver.find_elements(By.CSS_SELECTOR, "#results .result"):
        colour = card.find_element(By.CSS_SELECTOR, 'li[data-attribute="color"] .value').text
        out.append((card.get_attribute("data-id"), colour, card.get_attribute("data-frame")))
    return out


def _settled(driver, summary_part: str):
    """Waits until no search is in flight and the summary line mentions `summary_part`."""
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, 60).until(
        lambda d: (
            d.execute_script("return document.body.dataset.busy === undefined")
            and summary_part in d.find_element("id", "summary").text
            and d.find_elements("css selector", "#results .result")
        )
    )


def test_pick_an_item_change_its_colour_and_see_the_results_change(trained, tmp_path):
    # The one test that needs a system package: a person's view of the page exists only in a real browser.
    require(os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER),
            f"the search page is tested in real headless Chromium, and {CHROMIUM} or {CHROMEDRIVER} is "
            "missing: apt-get install -y chromium chromium-driver (as .ci/run does)")  # fmt: skip
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    searcher = service.Searcher(trained.model, index_lib.SearchIndex.load(trained.index_path))
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    with live_server(service.create_app(searcher)) as url:
        # the first catalogue item of another colour than the one we will ask for
        with urllib.request.urlopen(url + "/items?limit=48") as r:
            catalogue = json.loads(r.read())["items"]
        item = next(i for i in catalogue if i["attributes"]["color"]["value"] != NEW_COLOUR
                    and i["attributes"]["color"]["source"] == "label")  # fmt: skip
        driver = _driver(profile)
        try:
            driver.get(url + "/")
            WebDriverWait(driver, 60).until(
                lambda d: d.execute_script("return document.body.dataset.ready === '1'")
            )
            assert len(driver.find_elements(By.CSS_SELECTOR, ".catalogue-item")) == 48

            driver.find_element(By.CSS_SELECTOR, f'.catalogue-item[data-id="{item["id"]}"]').click()
            _settled(driver, "no change")
            before = _grid(driver)
            assert len(before) == 20 and item["id"] not in [i for i, _, _ in before]
            assert item["id"] in driver.find_element(By.ID, "query-name").text
            rows = driver.find_elements(By.CSS_SELECTOR, "#attributes tbody tr")
            assert [r.get_attribute("data-attribute") for r in rows] == trained.model.vocabulary.names
            # each attribute's activation map is drawn over the query (not a blank canvas)
            spread = driver.execute_script(
                "const c = document.querySelector('#attributes canvas');"
                "const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
                "let lo = 255, hi = 0; for (let i = 0; i < d.length; i += 4) { lo = Math.min(lo, d[i]); hi = Math.max(hi, d[i]); }"
                "return hi - lo;"
            )
            assert spread > 50

            colour = Select(driver.find_element(By.CSS_SELECTOR, 'select[data-attribute="color"]'))
            assert colour.first_selected_option.get_attribute("value") == item["attributes"]["color"]["value"]
            colour.select_by_value(NEW_COLOUR)
            _settled(driver, f"→ {NEW_COLOUR}")
            after = _grid(driver)
            driver.save_screenshot(str(tmp_path / "page.png"))
            if os.environ.get("FSN_SCREENSHOT"):
                shutil.copy(tmp_path / "page.png", os.environ["FSN_SCREENSHOT"])

            assert [i for i, _, _ in after] != [i for i, _, _ in before]  # the grid changed
            n_before = sum(c == NEW_COLOUR for _, c, _ in before)
            n_after = sum(c == NEW_COLOUR for _, c, _ in after)
            # Measured on training seeds 0-5 (this test trains seed 0): 0->9, 0->18, 0->18, 0->14, 0->19, 0->16
            # of 20 (chance: 2.5). The frame says which results have the new colour.
            assert n_after >= 4 and n_after >= n_before + 4, (before, after)
            for _, c, frame in after:
                assert (frame in ("match", "partial")) == (c == NEW_COLOUR), after
            assert "changed" in driver.find_element(
                By.CSS_SELECTOR, 'tr[data-attribute="color"]'
            ).get_attribute("class")

            # "only items with the changed values": every result has the new colour, and the summary says
            # among how many items they were ranked
            driver.find_element(By.ID, "only-changed").click()
            _settled(driver, f"only items with color = {NEW_COLOUR}")
            only = _grid(driver)
            assert len(only) == 20 and all(
                c == NEW_COLOUR and f in ("match", "partial") for _, c, f in only
            ), only
            assert [i for i, c, _ in after if c == NEW_COLOUR] == [i for i, _, _ in only][:n_after]
            candidates = searcher.index.where_mask({trained.model.vocabulary.attribute_index("color"): (
                trained.model.vocabulary.value_index("color", NEW_COLOUR),)}).sum()  # fmt: skip
            assert f"({candidates} of the catalogue)" in driver.find_element(By.ID, "summary").text
            driver.find_element(By.ID, "only-changed").click()
            _settled(driver, f"→ {NEW_COLOUR}")

            # a photo uploaded through the file input: new query, no change, 20 results
            photo = tmp_path / "photo.png"
            with urllib.request.urlopen(url + after[0][0].join(["/images/", ""])) as r:
                cv2.imwrite(str(photo), index_lib.decode_image(r.read(), "x")[..., ::-1])
            driver.find_element(By.ID, "upload").send_keys(str(photo))
            _settled(driver, "no change")
            assert "uploaded photo (64 x 64 px)" in driver.find_element(By.ID, "query-name").text
            assert len(_grid(driver)) == 20
            errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
            assert not errors, errors
        finally:
            driver.quit()
            shutil.rmtree(profile, ignore_errors=True)


PAGE_KEYS = """
const vm = require("vm"), fs = require("fs");
const el = new Proxy({}, {get: (t, k) => k === "classList" ? {toggle() {}, add() {}, remove() {}} : () => {},
                          set: () => true});
const context = {document: {getElementById: () => el, body: {dataset: {}}, querySelectorAll: () => []},
                 fetch: () => new Promise(() => {}), console};
vm.createContext(context);
vm.runInContext(fs.readFileSync(process.argv[1], "utf8"), context);
console.log(vm.runInContext(`
  const fresh = ["constructor", "toString", "__proto__"].map((n) => n in state.changes);
  state.changes["constructor"] = "red";
  state.changes["__proto__"] = "long";
  JSON.stringify({fresh, changed: ["constructor", "__proto__", "toString"].map(isChanged),
                  sent: Object.entries(state.changes)});`, context));
"""


def test_attribute_names_like_constructor_are_plain_keys_of_the_pages_changes():
    """The page kept its changes in `{}` and asked `name in state.changes`: an attribute called
    "constructor" showed as changed, and one called "__proto__" was never sent. Run in Node (the page's
    script with a stub document), without a browser."""
    node = shutil.which("node")
    require(node is not None, "node is not installed (apt-get install -y nodejs; .ci/run installs it)")
    script = os.path.join(os.path.dirname(service.__file__), "static", "app.js")
    done = subprocess.run([node, "-e", PAGE_KEYS, script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {
        "fresh": [False, False, False],
        "changed": [True, True, False],
        "sent": [["constructor", "red"], ["__proto__", "long"]],
    }
