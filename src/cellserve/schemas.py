"""JSON Schema (2020-12) validators that a hostile value cannot turn into a crash or a stall.

Declared schemas are trusted like code; the values checked against them come from requests.
jsonschema's own validator, with its format checks, is used with these changes:

- ``multipleOf``: ``Infinity`` and ``NaN`` (which Python's JSON parser accepts) fail it,
  instead of raising OverflowError against a fractional divisor;
- ``format: regex``: a value nesting groups past the recursion limit is not a regex, instead
  of raising RecursionError;
- ``uniqueItems`` in one pass (jsonschema compares every pair of objects: a 20 kB array of
  objects took 7 s, on the event loop);
- ``unevaluatedItems``/``unevaluatedProperties`` look the evaluated indexes and keys up in a
  set (jsonschema's list lookups are quadratic: python-jsonschema/jsonschema#1536).

What stays with the schema's author: a ``pattern`` that backtracks, and recursive schemas that
branch (``$ref: '#'`` under ``anyOf``), whose cost grows exponentially with the value's depth.
"""

from __future__ import annotations

import math
import re
from collections.abc import Hashable, Iterator, Mapping
from typing import Any

from jsonschema import Draft202012Validator, FormatChecker, ValidationError, validators
from jsonschema._utils import (  # what jsonschema's own unevaluated* keywords use
    extras_msg,
    find_evaluated_item_indexes_by_schema,
    find_evaluated_property_keys_by_schema,
)


def schema_validator(schema: Mapping[str, Any]) -> Draft202012Validator:
    """A validator for `schema` that checks formats too."""
    validator: Draft202012Validator = _Validator(schema, format_checker=_FORMATS)
    return validator


def _multiple_of(
    validator: Any, divisor: Any, instance: Any, schema: Mapping[str, Any]
) -> Iterator[ValidationError]:
    """jsonschema's ``multipleOf``, but a non-finite number fails it instead of raising
    OverflowError (against a fractional divisor)."""
    if isinstance(instance, float) and not math.isfinite(instance):
        yield ValidationError(f"{instance!r} is not a multiple of {divisor}")
    else:
        yield from _MULTIPLE_OF(validator, divisor, instance, schema)


def _is_regex(instance: object) -> bool:
    return not isinstance(instance, str) or bool(re.compile(instance))


def _unique_items(
    validator: Any, unique: Any, instance: Any, schema: Mapping[str, Any]
) -> Iterator[ValidationError]:
    """``uniqueItems`` in one pass over the array, with a hashable key per item."""
    if not unique or not validator.is_type(instance, "array"):
        return
    seen: set[Hashable] = set()
    for item in instance:
        key = _equality_key(item)
        if key in seen:
            yield ValidationError(f"{instance!r} has non-unique elements")
            return
        seen.add(key)


def _unevaluated_items(
    validator: Any, unevaluated: Any, instance: Any, schema: Mapping[str, Any]
) -> Iterator[ValidationError]:
    """jsonschema's ``unevaluatedItems``, the evaluated indexes in a set (one pass)."""
    if not validator.is_type(instance, "array"):
        return
    evaluated = set(find_evaluated_item_indexes_by_schema(validator, instance, schema))
    unexpected = [item for index, item in enumerate(instance) if index not in evaluated]
    if unexpected:
        listed, verb = extras_msg(unexpected)
        yield ValidationError(f"Unevaluated items are not allowed ({listed} {verb} unexpected)")


def _unevaluated_properties(
    validator: Any, unevaluated: Any, instance: Any, schema: Mapping[str, Any]
) -> Iterator[ValidationError]:
    """jsonschema's ``unevaluatedProperties``, the evaluated keys in a set (one pass)."""
    if not validator.is_type(instance, "object"):
        return
    evaluated = set(find_evaluated_property_keys_by_schema(validator, instance, schema))
    failing = [
        key
        for key, value in instance.items()
        if key not in evaluated
        for _ in validator.descend(value, unevaluated, path=key, schema_path=key)
    ]
    if not failing:
        return
    if unevaluated is False:
        listed, verb = extras_msg(sorted(failing, key=str))
        yield ValidationError(
            f"Unevaluated properties are not allowed ({listed} {verb} unexpected)"
        )
    else:
        listed, verb = extras_msg(failing)
        yield ValidationError(
            "Unevaluated properties are not valid under the given schema "
            f"({listed} {verb} unevaluated and invalid)"
        )


def _equality_key(value: Any) -> Hashable:
    """Equal for values JSON Schema calls equal: ``1`` and ``1.0`` are, ``true`` and ``1`` are
    not, objects regardless of key order. Recursion is bounded by request.MAX_JSON_DEPTH."""
    if isinstance(value, dict):
        return ("object", frozenset((k, _equality_key(v)) for k, v in value.items()))
    if isinstance(value, list):
        return ("array", tuple(_equality_key(v) for v in value))
    if isinstance(value, bool) or not isinstance(value, int | float):
        return (type(value).__name__, value)
    return ("number", value)  # Python's 1 == 1.0, with equal hashes


_MULTIPLE_OF = Draft202012Validator.VALIDATORS["multipleOf"]
_Validator = validators.extend(  # type: ignore[no-untyped-call]
    Draft202012Validator,
    {
        "multipleOf": _multiple_of,
        "uniqueItems": _unique_items,
        "unevaluatedItems": _unevaluated_items,
        "unevaluatedProperties": _unevaluated_properties,
    },
)
_FORMATS = FormatChecker(())
_FORMATS.checkers.update(Draft202012Validator.FORMAT_CHECKER.checkers)
# Groups nested a few thousand deep make re.compile recurse past the limit: not a regex.
_FORMATS.checks("regex", raises=(re.error, RecursionError))(_is_regex)
