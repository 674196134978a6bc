"""What checking a request against a declared contract costs, per request, without a kernel.

    python benchmarks/validation.py [--number 2000] [--repeat 15]

Times ``validation.apply_contract`` on the house-price example's ``POST /get_price`` (an
object of eight required numbers) for a matching body and for a body with a wrong type, and
prints the best of the repeats (the least disturbed by other work on the machine).
"""

from __future__ import annotations

import argparse
import json
import timeit
from pathlib import Path

from cellserve.notebook import load_notebook
from cellserve.validation import apply_contract

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "house_prices" / "house_prices.ipynb"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=2000, help="calls per timing")
    parser.add_argument("--repeat", type=int, default=15, help="timings; the best is shown")
    args = parser.parse_args()
    (endpoint,) = [e for e in load_notebook(EXAMPLE).endpoints if e.label == "POST /get_price"]
    contract = endpoint.contract
    assert contract is not None and contract.body is not None
    house = contract.body.example  # the body the notebook declares as its example
    for label, body in (("matching body", house), ("wrong type", {**house, "MedInc": "lots"})):
        raw = json.dumps(body).encode()
        request = {"body": body, "args": {}, "path": {}, "headers": {}}
        request["headers"]["Content-Type"] = "application/json"
        encoded = json.dumps(request)
        timings = timeit.repeat(
            lambda: apply_contract(contract, request, encoded, raw),  # noqa: B023
            number=args.number,
            repeat=args.repeat,
        )
        print(f"{label}: {min(timings) / args.number * 1e6:.1f} µs per request")


if __name__ == "__main__":
    main()
