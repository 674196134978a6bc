"""statuses.py: the statuses a ResponseInfo cell can set, read from its syntax tree."""

from __future__ import annotations

import pytest

from cellserve.statuses import response_info_statuses


@pytest.mark.parametrize(
    ("source", "statuses"),
    [
        ('print(json.dumps({"status": 201}))', (201,)),
        # The house-price example: a conditional expression in the status position.
        (
            'print(json.dumps({\n    "status": 400 if price_error is not None else 200,\n}))',
            (200, 400),
        ),
        # Computed through a name assigned in the cell, with HTTPStatus members.
        (
            "code = HTTPStatus.CREATED if ok else 409\nprint(json.dumps({'status': code}))",
            (201, 409),
        ),
        (
            "info = {}\ninfo['status'] = 404 if missing else 200\nprint(json.dumps(info))",
            (200, 404),
        ),
        ("print(json.dumps(dict(status=202, headers={})))", (202,)),
        ("s = {'ok': 200, 'gone': 410}[state]\nprint(json.dumps({'status': s}))", (200, 410)),
        ("print(json.dumps({'status': int(code or 204)}))", (204,)),
        # Numbers in the condition or in headers are not statuses.
        ("print(json.dumps({'status': 503 if len(q) > 100 else 200, 'x': 301}))", (200, 503)),
        # Names assigned nowhere, or out of range, give nothing.
        ("print(json.dumps({'status': compute()}))", ()),
        ("print(json.dumps({'status': 99 if a else 600}))", ()),
        ("x = x\nprint(json.dumps({'status': x}))", ()),
        # IPython syntax does not stop the reading.
        ("%time x = 1\nprint(json.dumps({'status': 418}))", (418,)),
    ],
)
def test_statuses_from_the_syntax_tree(source: str, statuses: tuple[int, ...]) -> None:
    assert response_info_statuses(source) == statuses


def test_other_languages_and_unparsable_cells_fall_back_to_literal_text() -> None:
    r_cell = 'cat(toJSON(list("status" = 201)))\n# "status": 409'
    assert response_info_statuses(r_cell, "R") == (409,)
    assert response_info_statuses('def (:\n"status": 404') == (404,)


def test_code_nested_too_deeply_to_parse_falls_back_to_literal_text() -> None:
    source = "x = " + "-" * 100_000 + "1\nprint(json.dumps({'status': 201}))"
    assert response_info_statuses(source) == (201,)
