"""schemas.py: jsonschema's validator, hardened, answering as jsonschema's own does."""

from __future__ import annotations

from typing import Any

import pytest
from jsonschema import Draft202012Validator

from cellserve.schemas import schema_validator


@pytest.mark.parametrize(
    "schema",
    [
        {"prefixItems": [{"type": "integer"}], "unevaluatedItems": False},
        {
            "anyOf": [{"prefixItems": [{}, {}]}, {"contains": {"type": "string"}}],
            "unevaluatedItems": False,
        },
        {"properties": {"a": {}}, "unevaluatedProperties": False},
        {"properties": {"a": {}}, "unevaluatedProperties": {"type": "integer", "minimum": 5}},
        {"allOf": [{"properties": {"a": {}}}], "unevaluatedProperties": False},
    ],
)
@pytest.mark.parametrize("value", [[1, 2, "x"], [1, "a"], {"a": 1, "b": 2, "c": "x"}, {"a": 1}])
def test_unevaluated_keywords_answer_as_jsonschemas_own(schema: dict[str, Any], value: Any) -> None:
    def messages(validator: Any) -> list[str]:
        return sorted(error.message for error in validator.iter_errors(value))

    assert messages(schema_validator(schema)) == messages(Draft202012Validator(schema))
