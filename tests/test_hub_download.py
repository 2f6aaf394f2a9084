"""`vantage data download` goes through huggingface_hub and its own settings
(HF_ENDPOINT, proxies, HF_HUB_OFFLINE), against a stand-in hub on 127.0.0.1, and writes the
files in the layout the adapters read. Each download runs `vantage` in a fresh process, so the
environment it sees is the one set here."""

from __future__ import annotations

import io
import json
import os
import sqlite3
import subprocess
import sys

import pytest

from fake_hub import FakeHub

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")


def parquet(rows: list[dict]) -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buf)
    return buf.getvalue()


SPIDER = {"spider/train-00000-of-00001.parquet": parquet(
              [{"db_id": "concert_singer", "question": "How many singers?", "query": "SELECT count(*) FROM singer",
                "query_toks": ["SELECT"], "question_toks": ["How"]}]),
          "spider/validation-00000-of-00001.parquet": parquet(
              [{"db_id": "pets_1", "question": "How many pets?", "query": "SELECT count(*) FROM pets",
                "query_toks": ["SELECT"], "question_toks": ["How"]}]),
          "README.md": b"# spider"}
TABLE = {"id": "1-10015132-11", "header": ["Player", "No."], "types": ["text", "real"],
         "rows": [["Aleksandar Radojevic", "25"], ["Shawn Respert", "31"]], "page_title": "", "caption": "",
         "name": "table_10015132_11", "page_id": "", "section_title": ""}
WIKISQL = {"default/validation/0000.parquet": parquet(
    [{"phase": 1, "question": "Who wears number 31?", "table": TABLE,
      "sql": {"human_readable": "", "sel": 0, "agg": 0,
              "conds": {"column_index": [1], "operator_index": [0], "condition": ["31"]}}}])}
REPOS = {"xlangai/spider": SPIDER, "Salesforce/wikisql": WIKISQL}


def download(name: str, out, env: dict) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.upper().endswith("_PROXY") and not k.startswith("HF_")}
    return subprocess.run([sys.executable, "-m", "vantage_core.cli", "data", "download", name, "--out", str(out)],
                          env={**clean, **env}, capture_output=True, text=True, timeout=120)


@pytest.fixture()
def hub():
    with FakeHub(REPOS) as h:
        yield h


def test_spider_download_writes_the_release_files_from_hf_endpoint(hub, tmp_path):
    res = download("spider", tmp_path / "spider", {"HF_ENDPOINT": hub.endpoint, "HF_HOME": str(tmp_path / "hf")})
    assert res.returncode == 0, res.stderr
    train = json.loads((tmp_path / "spider" / "train_spider.json").read_text())
    assert train == [{"db_id": "concert_singer", "question": "How many singers?", "query": "SELECT count(*) FROM singer"}]
    assert json.loads((tmp_path / "spider" / "dev.json").read_text())[0]["db_id"] == "pets_1"
    assert "tables.json and database/" in res.stdout  # what the hub copy lacks, said plainly
    assert any(p.startswith("/api/datasets/xlangai/spider/") for p in hub.requests)


def test_wikisql_download_is_a_release_the_adapter_loads(hub, tmp_path):
    from vantage_plugins.datasets.wikisql import WikiSQLDataset

    res = download("wikisql", tmp_path / "wikisql", {"HF_ENDPOINT": hub.endpoint, "HF_HOME": str(tmp_path / "hf")})
    assert res.returncode == 0, res.stderr
    report = WikiSQLDataset(path=str(tmp_path / "wikisql")).load("validation")
    (ex,) = report.examples
    assert ex.sql == "SELECT col0 FROM table_1_10015132_11 WHERE col1 = 31"
    con = sqlite3.connect(ex.db_paths[0])
    assert con.execute(ex.sql).fetchall() == [("shawn respert",)]  # lower-cased, as the release stores text
    con.close()


def test_offline_fails_at_once_without_asking_the_hub_then_reads_the_cache(hub, tmp_path):
    env = {"HF_ENDPOINT": hub.endpoint, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    res = download("spider", tmp_path / "a", env)
    assert res.returncode != 0
    assert "no network: HF_HUB_OFFLINE is set" in res.stderr and "path:" in res.stderr
    assert hub.requests == []
    assert download("spider", tmp_path / "b", {**env, "HF_HUB_OFFLINE": "0"}).returncode == 0  # fills the cache
    asked = len(hub.requests)
    res = download("spider", tmp_path / "c", env)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "c" / "train_spider.json").is_file() and len(hub.requests) == asked


def test_the_proxy_settings_are_honoured(hub, tmp_path):
    """HF_ENDPOINT names a host that does not exist; only the proxy (the stand-in) can answer."""
    env = {"HF_ENDPOINT": "http://hub.invalid", "HF_HOME": str(tmp_path / "hf"),
           "HTTP_PROXY": hub.endpoint, "http_proxy": hub.endpoint}
    res = download("spider", tmp_path / "spider", env)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "spider" / "train_spider.json").is_file()
    # every request reached the stand-in as a proxy (the whole URL in the request line)
    assert hub.requests and all(p.startswith("http://hub.invalid/") for p in hub.requests)
    assert any("/datasets/xlangai/spider/resolve/" in p for p in hub.requests)


def test_an_unreachable_endpoint_is_a_clear_error(tmp_path):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    res = download("spider", tmp_path / "x", {"HF_ENDPOINT": f"http://127.0.0.1:{port}", "HF_HOME": str(tmp_path / "hf")})
    assert res.returncode != 0
    assert f"127.0.0.1:{port}" in res.stderr and "xlangai/spider" in res.stderr and "path:" in res.stderr
