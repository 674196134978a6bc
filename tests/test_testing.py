"""cellserve.testing.notebook_client: seeded before the first request, errors raised in the test."""

from __future__ import annotations

import pytest

from cellserve import CellserveError, SeedError, app_from_notebook, app_from_notebooks
from cellserve.testing import notebook_client


def test_first_request_is_served_by_a_seeded_kernel(notebook) -> None:
    path = notebook(["import time\ntime.sleep(0.5)\nanswer = 42", "# GET /answer\nprint(answer)"])
    with notebook_client(path, base_url="/api/") as client:
        response = client.get("/api/answer")  # no 503 "starting": entering waited
        assert (response.status_code, response.text) == (200, "42\n")
        assert client.get("/api/_cellserve/ready").status_code == 200


def test_a_seed_error_is_raised_in_the_test(notebook) -> None:
    path = notebook(["1 / 0", "# GET /x\nprint(1)"])
    with pytest.raises(SeedError, match="ZeroDivisionError"), notebook_client(path):
        pytest.fail("the block must not run")


def test_an_app_with_several_notebooks(notebook) -> None:
    one = notebook(["# GET /x\nprint('one')"], name="one.ipynb")
    two = notebook(["# GET /x\nprint('two')"], name="two.ipynb")
    with notebook_client(app_from_notebooks([one, two])) as client:
        assert client.get("/one/x").text == "one\n"
        assert client.get("/two/x").text == "two\n"


def test_options_belong_to_a_path(notebook) -> None:
    app = app_from_notebook(notebook(["# GET /x\nprint(1)"]))
    with pytest.raises(CellserveError, match="options are for app_from_notebook"):
        notebook_client(app, kernels=2).__enter__()
