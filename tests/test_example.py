"""The house-prices example notebook and its client, served for real from the local CSV."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from openapi_spec_validator import validate

from cellserve import app_from_notebook
from cellserve.batching import split_answers
from cellserve.cells import CellCall, CellOutcome
from tests.conftest import HOUSING_CSV
from tests.servers import ServerThread

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "house_prices"
HOUSE = {
    "MedInc": 8.3252,
    "HouseAge": 41.0,
    "AveRooms": 6.984127,
    "AveBedrms": 1.02381,
    "Population": 322.0,
    "AveOccup": 2.555556,
    "Latitude": 37.88,
    "Longitude": -122.23,
}


@pytest.fixture(scope="module")
def server() -> Iterator[ServerThread]:
    if not HOUSING_CSV.is_file():
        pytest.fail(f"the test data set is missing: {HOUSING_CSV}")
    with pytest.MonkeyPatch.context() as patch:
        # Kernels inherit the server's environment, so set it before they start.
        patch.setenv("CALIFORNIA_HOUSING_CSV", str(HOUSING_CSV))
        with ServerThread(app_from_notebook(EXAMPLE / "house_prices.ipynb")) as running:
            yield running


@pytest.fixture
def client(server: ServerThread) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as http:
        yield http


def test_housing_stats(client: httpx.Client) -> None:
    response = client.get("/housing_stats")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    stats = response.json()
    assert stats["total_houses"] == 20640
    assert stats["most_imp_feature"] == "MedInc"
    assert stats["max_value"] == 500001.0
    assert stats["min_value"] == 14999.0


def test_get_price(client: httpx.Client) -> None:
    response = client.post("/get_price", json=HOUSE)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    price = response.json()["price"]
    assert isinstance(price, float)
    # Berkeley hills, actual median value $452,600; the data set caps values at $500,001.
    assert 0 < price <= 500_001


def test_get_price_is_deterministic(client: httpx.Client) -> None:
    first = client.post("/get_price", json=HOUSE).json()
    assert client.post("/get_price", json=HOUSE).json() == first


def test_get_price_from_a_form(client: httpx.Client) -> None:
    form = {name: str(value) for name, value in HOUSE.items()}
    json_price = client.post("/get_price", json=HOUSE).json()["price"]
    response = client.post("/get_price", data=form)
    assert response.status_code == 200
    assert response.json()["price"] == json_price


def requests_served(client: httpx.Client) -> int:
    served: int = client.get("/_cellserve/health").json()["stats"]["requests_served"]
    return served


def test_json_body_breaking_the_declaration_is_a_422_without_a_kernel(
    client: httpx.Client,
) -> None:
    house = {name: value for name, value in HOUSE.items() if name != "Longitude"}
    before = requests_served(client)
    wrong_type = client.post("/get_price", json={**HOUSE, "MedInc": "lots"})
    missing = client.post("/get_price", json=house)
    not_json = client.post("/get_price", content=b"{", headers={"Content-Type": "application/json"})
    assert requests_served(client) == before  # no kernel ran any of them

    assert wrong_type.status_code == 422
    assert wrong_type.headers["content-type"] == "application/json"
    assert wrong_type.json()["problems"] == [
        {"in": "body", "at": "/MedInc", "message": "'lots' is not of type 'number'"}
    ]
    assert missing.status_code == 422
    assert missing.json()["problems"] == [
        {"in": "body", "at": "", "message": "'Longitude' is a required property"}
    ]
    assert not_json.status_code == 422
    assert "not valid JSON" in not_json.json()["problems"][0]["message"]
    # Requests that match still reach the kernel.
    assert client.post("/get_price", json=HOUSE).status_code == 200
    assert requests_served(client) == before + 1


def test_form_with_a_missing_feature_is_the_cells_400(client: httpx.Client) -> None:
    form = {name: str(value) for name, value in HOUSE.items() if name != "Longitude"}
    response = client.post("/get_price", data=form)
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"error": "invalid house features", "missing": ["Longitude"]}


def test_form_with_a_non_numeric_feature_is_the_cells_400(client: httpx.Client) -> None:
    form = {name: str(value) for name, value in HOUSE.items()}
    response = client.post("/get_price", data={**form, "MedInc": "lots"})
    assert response.status_code == 400
    assert response.json() == {"error": "invalid house features", "not_numeric": ["MedInc"]}
    # The failed request leaves the kernel able to answer the next one.
    assert client.post("/get_price", json=HOUSE).status_code == 200


def houses(count: int) -> list[dict[str, float]]:
    """`count` different houses around the example one."""
    return [
        {
            name: value * (1 + 0.01 * (i % 7)) + (0.1 * i if name == "HouseAge" else 0)
            for name, value in HOUSE.items()
        }
        for i in range(count)
    ]


def test_batched_prices_equal_the_unbatched_ones(client: httpx.Client) -> None:
    bodies = houses(24)
    with ThreadPoolExecutor(24) as threads:
        batched = list(threads.map(lambda b: client.post("/get_price_batched", json=b), bodies))
    for body, response in zip(bodies, batched, strict=True):
        single = client.post("/get_price", json=body)
        assert (response.status_code, response.json()) == (single.status_code, single.json())
        assert response.headers["content-type"] == single.headers["content-type"]
    form = {name: str(value) for name, value in HOUSE.items() if name != "Latitude"}
    single, batched_form = (
        client.post(path, data=form) for path in ("/get_price", "/get_price_batched")
    )
    assert batched_form.status_code == single.status_code == 400
    assert batched_form.json() == single.json()


def test_clients_see_the_batched_route_as_the_unbatched_one(client: httpx.Client) -> None:
    spec = client.get("/openapi.json").json()
    single = spec["paths"]["/get_price"]["post"]
    batched = spec["paths"]["/get_price_batched"]["post"]
    for key in ("requestBody", "responses", "parameters"):
        assert batched.get(key) == single.get(key), key


def test_one_batch_of_many_houses_prices_each_as_alone(
    server: ServerThread, client: httpx.Client
) -> None:
    """The cell's batch answers, for a batch of 24 run as one call, equal single answers."""
    generation = server.app.state.cellserve.service.current
    endpoint = next(e for e in generation.api.endpoints if e.label == "POST /get_price_batched")
    bodies = houses(24)
    requests = json.dumps([{"body": body} for body in bodies])
    call = CellCall(endpoint.source, requests, variable="REQUESTS")

    async def run_batch() -> CellOutcome:
        async with generation.pool.lease(call) as lease:
            return await lease.run(timeout=60)

    outcome = server.run_in_loop(run_batch())
    responses = split_answers(
        outcome, len(bodies), notebook=generation.api.name, label=endpoint.label
    )
    for body, response in zip(bodies, responses, strict=True):
        single = client.post("/get_price", json=body).json()
        assert response.status_code == 200
        assert json.loads(response.body) == single


def test_openapi_lists_200_and_400_with_a_typed_body_and_an_example(client: httpx.Client) -> None:
    spec = client.get("/openapi.json").json()
    validate(spec)
    operation = spec["paths"]["/get_price"]["post"]
    assert {"200", "400", "422"} <= set(operation["responses"])
    body = operation["requestBody"]["content"]["application/json"]
    assert body["schema"]["properties"]["MedInc"]["type"] == "number"
    assert len(body["schema"]["required"]) == 8
    assert body["example"] == HOUSE
    price = operation["responses"]["200"]["content"]["application/json"]
    assert price["schema"]["properties"]["price"] == {"type": "number"}
    stats = spec["paths"]["/housing_stats"]["get"]["responses"]["200"]
    assert stats["content"]["application/json"]["example"]["total_houses"] == 20640


def test_client_script(server: ServerThread) -> None:
    result = subprocess.run(
        [sys.executable, str(EXAMPLE / "client.py"), "--url", server.url],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "GET /housing_stats -> 200" in result.stdout
    assert "POST /get_price -> 200" in result.stdout
    assert '"price"' in result.stdout


def test_the_examples_own_test_file_passes(tmp_path: Path) -> None:
    """examples/house_prices/test_house_prices.py is for users to copy: it must pass as is."""
    env = {**os.environ, "CALIFORNIA_HOUSING_CSV": str(HOUSING_CSV)}
    pytest_args = ["-q", "-p", "no:cacheprovider", "--rootdir", str(EXAMPLE.parents[1])]
    result = subprocess.run(
        [sys.executable, "-m", "pytest", *pytest_args, str(EXAMPLE / "test_house_prices.py")],
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
        env=env,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"\b5 passed\b", result.stdout), result.stdout


def test_plot_example_answers_a_png_and_an_html_table() -> None:
    from PIL import Image

    plot = Path(__file__).resolve().parents[1] / "examples" / "plot" / "plot.ipynb"
    with ServerThread(app_from_notebook(plot)) as running:
        image = httpx.get(running.url + "/histogram", params={"seed": "3"}, timeout=60)
        assert image.headers["content-type"] == "image/png"
        assert Image.open(io.BytesIO(image.content)).size == (600, 400)
        table = httpx.get(running.url + "/summary", timeout=60)
        assert table.headers["content-type"].startswith("text/html")
        assert "<table" in table.text
