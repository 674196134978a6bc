"""How REQUEST becomes a string literal for kernels without the fast path (pure)."""

from __future__ import annotations

import json
import subprocess

import pytest

from cellserve.kernels import request_assignment

HOSTILE = json.dumps({"body": "\"'$(id) `id` ${x} @{y} #{z} \\\\ \n\u00e9"})


def test_python_literal_evaluates_to_the_same_string() -> None:
    namespace: dict[str, object] = {}
    exec(request_assignment("python", HOSTILE), namespace)
    assert namespace["REQUEST"] == HOSTILE


@pytest.mark.parametrize("sigil", ["$", "@", "`", "#"])
def test_generic_literal_carries_no_interpolation_sigils(sigil: str) -> None:
    assert sigil not in request_assignment("julia", HOSTILE).removeprefix("REQUEST = ")


def test_bash_literal_is_inert() -> None:
    script = request_assignment("bash", HOSTILE) + '\nprintf %s "$REQUEST"'
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True)
    assert result.stdout == HOSTILE
