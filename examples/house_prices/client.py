"""Call the house price API served from house_prices.ipynb.

Start the server first (see README.md), then run:

    python examples/house_prices/client.py [--url http://127.0.0.1:9090]
"""

import argparse
import json
import sys

import httpx

# One block group from the data set (Berkeley hills; actual median value $452,600).
EXAMPLE_HOUSE = {
    "MedInc": 8.3252,
    "HouseAge": 41.0,
    "AveRooms": 6.984127,
    "AveBedrms": 1.02381,
    "Population": 322.0,
    "AveOccup": 2.555556,
    "Latitude": 37.88,
    "Longitude": -122.23,
}


def show(response: httpx.Response) -> None:
    """Print a response; exit non-zero unless it is a 2xx."""
    print(f"{response.request.method} {response.request.url.path} -> {response.status_code}")
    try:
        print(json.dumps(response.json(), indent=2))
    except ValueError:
        print(response.text)
    if not response.is_success:
        sys.exit(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:9090", help="base URL of the server")
    parser.add_argument("--timeout", type=float, default=30.0, help="request timeout in seconds")
    args = parser.parse_args()

    with httpx.Client(base_url=args.url.rstrip("/"), timeout=args.timeout) as client:
        try:
            show(client.get("/housing_stats"))
            print()
            show(client.post("/get_price", json=EXAMPLE_HOUSE))
        except httpx.HTTPError as exc:
            print(f"request to {args.url} failed: {exc}", file=sys.stderr)
            sys.exit(2)


if __name__ == "__main__":
    main()
