"""The server's request and response models come from the engine's types, and the decoding modes
are written in one place."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from vantage_core.config import DECODING_MODES, InferenceConfig
from vantage_core.inference.engine import Candidate, Generation
from vantage_core.inference.request_schema import dataclass_model, option_fields
from vantage_core.inference.serve import (REQUEST_LIMITS, REQUEST_OPTIONS, CandidateOut, GenerateRequest,
                                          GenerateResponse)

REPO = Path(__file__).resolve().parents[1]


def public_fields(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if not f.name.startswith("_")]


def test_the_response_has_the_fields_of_a_generation_in_their_order():
    """GenerateResponse and CandidateOut carry exactly the public fields of Generation and
    Candidate, in the dataclasses' order (the order of the JSON the server sends)."""
    assert list(GenerateResponse.model_fields) == public_fields(Generation)
    assert list(CandidateOut.model_fields) == public_fields(Candidate)
    assert [n for n, f in GenerateResponse.model_fields.items() if f.is_required()] == \
        ["sql", "candidates", "chosen", "seconds", "n_tokens"]


def test_a_field_added_to_a_dataclass_appears_in_its_model():
    """A field added to a dataclass reaches the derived model with its type and default;
    private fields stay out; a default factory becomes the model's default."""
    @dataclasses.dataclass
    class Answer:
        sql: str
        tokens: list[str] = dataclasses.field(default_factory=list)
        cost: float | None = None
        _hidden: dict = dataclasses.field(default_factory=dict)

    model = dataclass_model(Answer, "AnswerOut", types={"sql": str | None})
    assert list(model.model_fields) == ["sql", "tokens", "cost"]
    schema = model.model_json_schema()
    assert schema["required"] == ["sql"] and schema["properties"]["tokens"]["default"] == []
    assert model(sql=None, cost=1.5).model_dump() == {"sql": None, "tokens": [], "cost": 1.5}
    with pytest.raises(ValidationError):
        model(sql="x", cost="much")


def test_request_options_keep_the_configs_types_and_bounds():
    """Each decoding field of a request has the inference section's type and bounds, optional,
    with the server's tighter limits on top."""
    fields = option_fields(InferenceConfig, ["top_p", "beam_size"], {"beam_size": {"le": 8}}, {})
    assert fields["top_p"][1].default is None
    assert set(REQUEST_OPTIONS) <= set(InferenceConfig.model_fields)
    ok = {"question": "q", "db_id": "d"}
    for bad in ({"top_p": 0}, {"temperature": float("nan")}, {"beam_size": 0}, {"decoding": "nucleus"},
                {"beam_size": REQUEST_LIMITS["beam_size"]["le"] + 1}, {"max_new_tokens": 0}):
        with pytest.raises(ValidationError):
            GenerateRequest(**ok, **bad)
    req = GenerateRequest(**ok, decoding="sample", top_p=0.5, beam_size=64)
    assert (req.decoding, req.top_p, req.beam_size, req.temperature) == ("sample", 0.5, 64, None)


def test_the_decoding_modes_are_written_once():
    """"greedy", "beam", "sample" are listed together only in config.py (DecodingMode); every
    other module imports them from there."""
    listed = re.compile(r"""["']greedy["']\s*,\s*["']beam["']\s*,\s*["']sample["']""")
    files = sorted((REPO / "vantage_core").rglob("*.py"))
    found = [str(f.relative_to(REPO)) for f in files if listed.search(f.read_text())]
    assert found == ["vantage_core/config.py"]
    assert DECODING_MODES == ("greedy", "beam", "sample")
