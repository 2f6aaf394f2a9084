"""The playground in a real browser: headless Chromium (Playwright driving the system's
chromium) against ``vantage serve`` on loopback with a tiny model.

The tiny model is first overfitted on one question so that its answer is known SQL that runs:
then the page must show that SQL, its rows and the routing of each generated token. A
screenshot is kept at ``artifacts/playground.png`` (git-ignored).

Runs where Playwright and a Chromium are installed (``pip install playwright`` and Debian's
``apt-get install chromium``; no ``playwright install`` needed); set ``VANTAGE_CHROMIUM`` to use
another Chromium binary. Skips with a message otherwise.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

import vantage_core  # noqa: F401  (BLAS before mlx)

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "artifacts"
QUESTION = "what are the names of all singers?"
ANSWER = "SELECT name FROM singer"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def chromium_path() -> str | None:
    candidates = [os.environ.get("VANTAGE_CHROMIUM"), shutil.which("chromium"), shutil.which("chromium-browser"),
                  shutil.which("google-chrome"), shutil.which("google-chrome-stable")]
    return next((c for c in candidates if c and Path(c).is_file()), None)


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (pip install playwright)")
    exe = chromium_path()
    if exe is None:
        pytest.skip("no Chromium found (apt-get install chromium, or set VANTAGE_CHROMIUM to a Chromium binary)")
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=exe, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


def overfit_model(folder: Path, db: Path, steps: int = 300) -> Path:
    """Train the tiny model in ``folder`` on one (question, SQL) pair until it answers it."""
    import mlx.core as mx
    import mlx.nn as nn
    import mlx.optimizers as optim
    import numpy as np
    from mlx.utils import tree_flatten

    from vantage_core.inference.engine import Engine
    from vantage_core.model.loss import loss

    engine = Engine.load(folder)
    model, tok = engine.model, engine.tokenizer
    prompt = engine.request(QUESTION, engine.schema_of(db), str(db)).prompt
    seq = prompt + tok.encode(ANSWER) + [tok.eos_id]
    tokens = mx.array([seq[:-1]], dtype=mx.int32)
    targets = mx.array([seq[1:]], dtype=mx.int32)
    mask = np.zeros((1, len(seq) - 1), dtype=np.float32)
    mask[0, len(prompt) - 1:] = 1.0
    batch = {"tokens": tokens, "targets": targets, "loss_mask": mx.array(mask)}
    model.train()
    opt = optim.Adam(learning_rate=3e-3)
    loss_and_grad = nn.value_and_grad(model, lambda b: loss(model, b)[0])
    for _ in range(steps):
        value, grads = loss_and_grad(batch)
        opt.update(model, grads)
        mx.eval(model.parameters(), opt.state, value)
    model.eval()
    mx.save_safetensors(str(folder / "model.safetensors"), dict(tree_flatten(model.parameters())))
    return folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serving(args: list[str], log_file: Path) -> Iterator[str]:
    """``vantage serve`` with ``args`` on a free loopback port, its output in ``log_file``: its URL
    once /health answers (within a minute), the server stopped at the end."""
    import httpx

    port = free_port()
    log = open(log_file, "w")
    proc = subprocess.Popen([sys.executable, "-m", "vantage_core.cli", "serve", *args, "--host", "127.0.0.1",
                             "--port", str(port)], stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                log.flush()
                pytest.fail(f"vantage serve did not start:\n{log_file.read_text()[-3000:]}")
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from test_analysis import make_music_db, make_tiny_run

    root = tmp_path_factory.mktemp("playground")
    (root / "dbs").mkdir()
    db = make_music_db(root / "dbs" / "music.sqlite")
    model_dir = overfit_model(make_tiny_run(root / "model"), db)
    with serving(["--checkpoint", str(model_dir), "--db-dir", str(root / "dbs")], root / "server.log") as url:
        yield url


def test_playground_answers_runs_and_shows_routing(browser, server):
    page = browser.new_page(viewport={"width": 1280, "height": 1100})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(server + "/")
    page.wait_for_selector("#db option[value='music']", state="attached", timeout=15_000)
    # the known database's schema is shown (in a collapsed <details>)
    page.wait_for_function("document.getElementById('schema-tables').textContent.includes('singer')")
    assert page.locator("#schema-view").is_visible()

    page.fill("#question", QUESTION)
    page.select_option("#decoding", "beam")
    page.fill("#beam-size", "3")
    page.check("#run")
    page.click("#ask")
    page.wait_for_selector("#answer:not([hidden])", timeout=60_000)
    page.wait_for_function("document.getElementById('sql').textContent.length > 0")

    assert page.inner_text("#sql").strip() == ANSWER
    assert page.locator("#candidates tbody tr").count() == 3  # the beam's candidates
    assert page.locator("#rows-panel").is_visible()
    cells = [page.inner_text(f"#rows tbody tr:nth-child({i}) td") for i in (1, 2, 3)]
    assert sorted(cells) == ["Ann", "Bo", "Cy"]

    # routing: one row per MoE layer (2), one column per generated token
    assert page.locator("#routing-panel").is_visible()
    n_tokens = page.locator("#routing thead th.tok").count()
    assert n_tokens >= 3
    cells = page.locator("#routing td.route-cell")
    assert cells.count() == 2 * n_tokens
    first = cells.first
    assert first.locator(".stripe").count() == 2  # top-2 router: two experts per token
    title = first.get_attribute("title")
    assert title.startswith("layer 0") and title.count("expert ") == 2
    weights = [float(line.split(": ")[1]) for line in title.splitlines()[1:]]
    assert all(0 < w <= 1 for w in weights)
    colours = {s.evaluate("e => getComputedStyle(e).backgroundColor") for s in page.locator(".stripe").all()[:40]}
    assert len(colours) > 1  # experts are told apart by colour
    first.hover()
    assert page.locator("#tooltip").is_visible() and "expert" in page.inner_text("#tooltip")
    assert page.locator("#legend .legend-item").count() >= 2

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "playground.png"
    page.screenshot(path=str(shot), full_page=True)
    print(f"\nscreenshot: {shot}")
    assert shot.stat().st_size > 10_000
    assert not errors, errors
    page.close()


def test_playground_with_a_pasted_schema_and_a_bad_request(browser, server):
    page = browser.new_page()
    page.goto(server + "/")
    page.wait_for_selector("#db option[value='__paste__']", state="attached", timeout=15_000)
    page.select_option("#db", "__paste__")
    assert page.locator("#schema-box").is_visible() and page.locator("#run").is_disabled()
    page.fill("#schema-sql", "CREATE TABLE singer (singer_id INTEGER PRIMARY KEY, name TEXT, age INTEGER);")
    page.fill("#question", QUESTION)
    page.select_option("#decoding", "greedy")
    page.click("#ask")
    page.wait_for_function("document.getElementById('sql').textContent.length > 0", timeout=60_000)
    assert page.inner_text("#sql").strip()
    assert not page.locator("#rows-panel").is_visible()  # nothing to run a pasted schema on

    # the server's own message reaches the page when the schema is not SQL
    page.fill("#schema-sql", "this is not a schema")
    page.click("#ask")
    page.wait_for_selector("#error:not([hidden])", timeout=30_000)
    assert "400" in page.inner_text("#error") or "422" in page.inner_text("#error")
    page.close()


def test_playground_shows_binary_and_infinite_cells(browser, tmp_path):
    """Rows holding a BLOB and +-inf (sent as {"$base64": ...} and "Infinity") show as X'FFFE0080'
    and Infinity, and the page raises no error."""
    from infer_fixture import first_table_engine, make_cells_db, make_model_dir
    from test_serve_api import LoopbackServer
    from vantage_core.inference.serve import ServeSettings, create_app

    make_cells_db((tmp_path / "dbs").mkdir() or tmp_path / "dbs" / "cells.sqlite")
    engine = first_table_engine(make_model_dir(tmp_path / "model"))  # answers SELECT * FROM cells
    with LoopbackServer(create_app(engine, ServeSettings(db_dirs=[str(tmp_path / "dbs")]))) as http:
        page = browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(f"{http.base_url}/")
        page.wait_for_selector("#db option[value='cells']", state="attached", timeout=15_000)
        page.fill("#question", "everything")
        page.select_option("#decoding", "greedy")
        page.check("#run")
        page.click("#ask")
        page.wait_for_selector("#rows tbody tr", timeout=60_000)
        rows = [[td.inner_text() for td in tr.locator("td").all()] for tr in page.locator("#rows tbody tr").all()]
        assert rows == [["X'FFFE0080'", "Infinity"], ["X'00'", "-Infinity"]]
        assert not errors, errors
        page.close()


def test_playground_shows_the_sql_formatted(browser, tmp_path):
    """A model writing ``select singer . name , count ( * ) ...``: the page shows the answer and
    its candidates as ``SELECT singer.name, COUNT(*) ...`` and the rows of the model's text."""
    from infer_fixture import first_table_engine, make_db, make_model_dir
    from test_serve_api import LoopbackServer
    from test_serve_openai import MODEL_STYLE, SHOWN
    from vantage_core.inference.serve import ServeSettings, create_app

    make_db((tmp_path / "dbs").mkdir() or tmp_path / "dbs" / "concerts.sqlite")
    engine = first_table_engine(make_model_dir(tmp_path / "model"), MODEL_STYLE, max_new_tokens=96)
    with LoopbackServer(create_app(engine, ServeSettings(db_dirs=[str(tmp_path / "dbs")]))) as http:
        page = browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(f"{http.base_url}/")
        page.wait_for_selector("#db option[value='concerts']", state="attached", timeout=15_000)
        page.select_option("#db", "concerts")
        page.fill("#question", "singers over 20")
        page.select_option("#decoding", "greedy")
        page.check("#run")
        page.click("#ask")
        page.wait_for_selector("#rows tbody tr", timeout=60_000)
        assert page.inner_text("#sql").strip() == SHOWN
        assert [c.inner_text() for c in page.locator("#candidates tbody code").all()] == [SHOWN]
        names = sorted(tr.locator("td").first.inner_text() for tr in page.locator("#rows tbody tr").all())
        assert names == ["Ann", "Bo", "Cy"]
        assert not errors, errors
        page.close()
