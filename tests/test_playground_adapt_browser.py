"""The playground's correct-then-adapt loop in a real browser (headless Chromium through
Playwright, as in test_playground_browser): ``vantage serve --adapt-dir`` with the tiny pointer
model of test_adapt, a question it answers wrong, the SQL corrected in the page, saved as an
example, the model adapted to the database with a progress bar, and the adapted model's rows.
A screenshot is kept at ``artifacts/playground_adapt.png`` (git-ignored)."""

from __future__ import annotations

import json
import shutil

import pytest

from test_adapt import ICE, base_run, cache, planets_db, rows_of  # noqa: F401  (base_run, cache: fixtures)
from test_playground_browser import ARTIFACTS, browser, serving  # noqa: F401  (browser: a fixture)

pytestmark = pytest.mark.browser

STEPS = 40
JOB_BOUND_MS = 600_000  # a generous bound on one tiny adaptation on a busy 2-core machine


def shown_rows(page) -> list[str]:
    return sorted(tr.locator("td").first.inner_text() for tr in page.locator("#rows tbody tr").all())


def test_a_corrected_answer_is_saved_and_the_adapted_model_gives_it(browser, base_run, tmp_path):  # noqa: F811
    """Ask, see rows that are not the question's, correct the SQL, save it, adapt (the progress bar
    reaches its end), and see the adapted model's answer with the corrected SQL's rows. Beside the
    serve default of 200 synthetic pairs, the tiny model learns the one pair in 40 steps only with
    the fine-tuned weights saved alone (--adapt-blend 1); test_serve_adapt's job keeps the default."""
    dbs = tmp_path / "dbs"
    dbs.mkdir()
    db = shutil.copy(planets_db(tmp_path), dbs / "planets.sqlite")
    gold = sorted(str(row[0]) for row in rows_of(db, ICE["sql"]))
    args = ["--checkpoint", str(base_run), "--db-dir", str(dbs), "--adapt-dir", str(tmp_path / "adapt"),
            "--adapt-steps", str(STEPS), "--adapt-blend", "1"]
    with serving(args, tmp_path / "server.log") as url:
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(url + "/")
        page.wait_for_selector("#db option[value='planets']", state="attached", timeout=15_000)
        page.fill("#question", ICE["question"])
        page.select_option("#decoding", "greedy")
        page.check("#run")
        page.click("#ask")
        page.wait_for_selector("#rows-panel:not([hidden])", timeout=60_000)
        assert shown_rows(page) != gold  # the served model's answer is wrong

        page.click("#edit-sql")
        page.fill("#correct-sql", ICE["sql"])
        page.click("#save-example")
        page.wait_for_function("document.getElementById('learn-status').textContent.startsWith('saved')")
        assert "1 example of planets in planets.examples.jsonl" in page.inner_text("#learn-status")

        page.click("#adapt")
        page.wait_for_selector("#adapt-progress:not([hidden])")
        page.wait_for_function("document.getElementById('adapt-progress').dataset.state !== 'running'",
                               timeout=JOB_BOUND_MS)
        progress = page.locator("#adapt-progress")
        assert progress.get_attribute("data-state") == "succeeded", page.inner_text("#learn-status")
        assert progress.evaluate("bar => [bar.value, bar.max]") == [STEPS, STEPS]
        page.wait_for_function("document.getElementById('answered-by').textContent.includes('adapted to planets')",
                               timeout=60_000)
        page.wait_for_selector("#rows tbody tr")
        assert shown_rows(page) == gold

        ARTIFACTS.mkdir(exist_ok=True)
        shot = ARTIFACTS / "playground_adapt.png"
        page.screenshot(path=str(shot), full_page=True)
        print(f"\nscreenshot: {shot}")
        assert not errors, errors
        page.close()
    saved = (tmp_path / "adapt" / "planets.examples.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in saved] == [ICE]


def test_the_correction_controls_are_hidden_when_adapting_is_off(browser, base_run, tmp_path):  # noqa: F811
    """Served without --adapt-dir, an answer shows no way to correct it."""
    dbs = tmp_path / "dbs"
    dbs.mkdir()
    shutil.copy(planets_db(tmp_path), dbs / "planets.sqlite")
    with serving(["--checkpoint", str(base_run), "--db-dir", str(dbs)], tmp_path / "server.log") as url:
        page = browser.new_page()
        page.goto(url + "/")
        page.wait_for_selector("#db option[value='planets']", state="attached", timeout=15_000)
        page.fill("#question", ICE["question"])
        page.select_option("#decoding", "greedy")
        page.click("#ask")
        page.wait_for_function("document.getElementById('sql').textContent.length > 0", timeout=60_000)
        assert page.locator("#edit-sql").is_hidden() and page.locator("#learn").is_hidden()
        page.close()
