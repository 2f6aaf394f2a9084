"""Fuzz the API from its own OpenAPI document (schemathesis): no input may cause a 5xx.

Bounded for CI: valid and invalid data (both generation modes), the boundary values of the
coverage phase and at most MAX_EXAMPLES fuzzed cases per operation, each request with small
generation limits (a few seconds in all)."""

import pytest

schemathesis = pytest.importorskip("schemathesis", minversion="4.0",
                                   reason="pip install 'schemathesis>=4' to fuzz the API")
from hypothesis import HealthCheck, settings  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.config import SchemathesisConfig  # noqa: E402

from infer_fixture import make_db, make_model_dir  # noqa: E402
from vantage_core.inference.engine import Engine  # noqa: E402
from vantage_core.inference.serve import ServeSettings, create_app  # noqa: E402

MAX_EXAMPLES = 40


def _app(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    (root / "dbs").mkdir()
    make_db(root / "dbs" / "concerts.sqlite")
    engine = Engine.load(make_model_dir(root / "model"))
    # Small generation limits keep each fuzzed request cheap; larger ones get a 422.
    return create_app(engine, ServeSettings(db_dirs=[str(root / "dbs")], max_new_tokens=6, max_beam_size=2,
                                            max_body_bytes=8192))


def _config() -> SchemathesisConfig:
    """Positive and negative data, every phase that sends single requests, a fixed seed."""
    config = SchemathesisConfig()
    project = config.projects.default
    project.generation.update(modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE], max_examples=MAX_EXAMPLES,
                              deterministic=True)
    for phase in (project.phases.examples, project.phases.coverage, project.phases.fuzzing):
        phase.enabled = True
    return config


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory):
    return schemathesis.openapi.from_asgi("/openapi.json", _app(tmp_path_factory), config=_config())


schema = schemathesis.pytest.from_fixture("api_schema")
STATUSES: list[int] = []


@pytest.mark.slow
@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_api_never_answers_5xx(case):
    response = case.call()
    STATUSES.append(response.status_code)
    assert response.status_code < 500, (case.path, case.body, response.text[:300])
    if response.status_code >= 400:
        assert "detail" in response.json()


@pytest.mark.slow
def test_the_fuzz_run_sent_requests_and_got_no_5xx():
    """Runs after the fuzz test (file order): it did send requests, none answered 5xx."""
    if not STATUSES:
        pytest.skip("the fuzz test did not run in this session")
    from collections import Counter

    print(f"fuzzed requests: {len(STATUSES)}, status codes: {dict(sorted(Counter(STATUSES).items()))}")
    assert not [s for s in STATUSES if s >= 500]
    assert any(s == 422 for s in STATUSES) and any(s == 200 for s in STATUSES)  # negative and positive data
