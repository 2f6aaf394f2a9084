"""Fuzz the API from its own OpenAPI document (schemathesis): no input may cause a 5xx."""

import pytest

schemathesis = pytest.importorskip("schemathesis", reason="pip install schemathesis to fuzz the API")
from hypothesis import HealthCheck, settings  # noqa: E402

from infer_fixture import make_db, make_model_dir  # noqa: E402
from vantage_core.inference.engine import Engine  # noqa: E402
from vantage_core.inference.serve import ServeSettings, create_app  # noqa: E402


def _app(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    (root / "dbs").mkdir()
    make_db(root / "dbs" / "concerts.sqlite")
    engine = Engine.load(make_model_dir(root / "model"))
    # Small generation limits keep each fuzzed request cheap; larger ones get a 422.
    return create_app(engine, ServeSettings(db_dirs=[str(root / "dbs")], max_new_tokens=6, max_beam_size=2))


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory):
    return schemathesis.openapi.from_asgi("/openapi.json", _app(tmp_path_factory))


schema = schemathesis.pytest.from_fixture("api_schema")


@pytest.mark.slow
@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_api_never_answers_5xx(case):
    response = case.call()
    assert response.status_code < 500, (case.path, case.body, response.text[:300])
    if response.status_code >= 400:
        assert "detail" in response.json()
