"""Tests for the house price API, run against real kernels with Starlette's TestClient.

Copy this file next to your own notebook and change NOTEBOOK and the requests. Run it with

    pip install 'cellserve[testing]' pytest
    CALIFORNIA_HOUSING_CSV=/path/to/california_housing.csv pytest test_house_prices.py

(without the variable the notebook downloads the data set once). `notebook_client` starts
the kernels and runs the seed cells before the first test, raises a seed cell's error if
one fails, and shuts the kernels down after the last test. No server or port is involved.
"""

from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from cellserve.testing import notebook_client

NOTEBOOK = Path(__file__).with_name("house_prices.ipynb")

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
def client() -> Iterator[TestClient]:
    # One app for the whole module: seeding (training the model) happens once.
    with notebook_client(NOTEBOOK, timeout=60) as client:
        yield client


def test_stats_describe_the_data_set(client: TestClient) -> None:
    response = client.get("/housing_stats")
    assert response.status_code == 200
    assert response.json()["total_houses"] == 20640


def test_price_of_a_house(client: TestClient) -> None:
    response = client.post("/get_price", json=HOUSE)
    assert response.status_code == 200
    assert 0 < response.json()["price"] <= 500_001


def test_a_wrong_type_is_rejected_before_the_notebook_runs(client: TestClient) -> None:
    response = client.post("/get_price", json={**HOUSE, "MedInc": "lots"})
    assert response.status_code == 422
    assert response.json()["problems"][0]["at"] == "/MedInc"


def test_a_missing_form_field_is_the_notebooks_400(client: TestClient) -> None:
    form = {name: str(value) for name, value in HOUSE.items() if name != "Longitude"}
    response = client.post("/get_price", data=form)
    assert response.status_code == 400
    assert response.json()["missing"] == ["Longitude"]


def test_the_api_is_documented(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    assert {"200", "400"} <= set(spec["paths"]["/get_price"]["post"]["responses"])
