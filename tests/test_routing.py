"""routing.py: precedence, literal matching, 404 vs 405, raw-path parameters."""

from __future__ import annotations

import nbformat
import pytest

from cellserve.notebook import parse_notebook_text
from cellserve.routing import MethodNotAllowed, RouteMatch, RouteTable, split_raw_path


def table(*annotations: str) -> RouteTable:
    """A route table from annotations such as ``"GET /hello/:name"``, in notebook order."""
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_code_cell(f"# {a}\nprint(1)") for a in annotations]
    api = parse_notebook_text(nbformat.writes(notebook), name="routes.ipynb")
    return RouteTable(api.endpoints)


def hit(routes: RouteTable, raw_path: str, verb: str = "GET") -> tuple[str, dict[str, str]]:
    found = routes.match(split_raw_path(raw_path), verb)
    assert isinstance(found, RouteMatch), found
    return found.endpoint.label, found.params


# -- precedence -------------------------------------------------------------------------------


def test_kernel_gateway_sort_order() -> None:
    routes = table("GET /:foo", "GET /hello/:foo", "GET /hello/world")
    assert [e.path.raw for e in routes.endpoints] == ["/hello/world", "/hello/:foo", "/:foo"]
    assert hit(routes, "/hello/world") == ("GET /hello/world", {})
    assert hit(routes, "/hello/there") == ("GET /hello/:foo", {"foo": "there"})
    assert hit(routes, "/hello") == ("GET /:foo", {"foo": "hello"})


def test_static_path_beats_parameter_path() -> None:
    # Kernel Gateway: GET /hello/person is the static route, not /hello/:person.
    routes = table("GET /hello/:person", "GET /hello/person")
    assert hit(routes, "/hello/person") == ("GET /hello/person", {})
    assert hit(routes, "/hello/governor") == ("GET /hello/:person", {"person": "governor"})


@pytest.mark.parametrize(
    "annotations",
    [("GET /zone/:id", "GET /:kind/overview"), ("GET /:kind/overview", "GET /zone/:id")],
)
def test_deeper_first_parameter_wins_whatever_the_notebook_order(
    annotations: tuple[str, str],
) -> None:
    routes = table(*annotations)
    assert hit(routes, "/zone/overview") == ("GET /zone/:id", {"id": "overview"})
    assert hit(routes, "/city/overview") == ("GET /:kind/overview", {"kind": "city"})


def test_equal_precedence_keeps_notebook_order() -> None:
    routes = table("GET /:a/x", "GET /:b/:c")
    assert hit(routes, "/q/x") == ("GET /:a/x", {"a": "q"})
    routes = table("GET /:b/:c", "GET /:a/x")
    assert hit(routes, "/q/x") == ("GET /:b/:c", {"b": "q", "c": "x"})


# -- literal matching -------------------------------------------------------------------------


def test_literal_segments_are_not_regexes() -> None:
    routes = table("GET /v1.0/x")
    assert hit(routes, "/v1.0/x") == ("GET /v1.0/x", {})
    assert routes.match(split_raw_path("/v1x0/x"), "GET") is None


@pytest.mark.parametrize("raw", ["/ping/", "/pin", "/ping/x", "/PING", "/"])
def test_unknown_paths_are_none(raw: str) -> None:
    assert table("GET /ping").match(split_raw_path(raw), "GET") is None


def test_root_path() -> None:
    routes = table("GET /")
    assert hit(routes, "/") == ("GET /", {})
    assert routes.match(split_raw_path("/x"), "GET") is None


def test_percent_encoded_literal_matches_its_decoded_form() -> None:
    assert hit(table("GET /café"), "/caf%C3%A9") == ("GET /café", {})


# -- 405 --------------------------------------------------------------------------------------


def test_known_path_with_other_verb_is_405_listing_verbs_in_notebook_order() -> None:
    routes = table("POST /items", "GET /items", "GET /other")
    found = routes.match(split_raw_path("/items"), "DELETE")
    assert found == MethodNotAllowed(("POST", "GET"))
    assert routes.match(split_raw_path("/items"), "PATCH") == MethodNotAllowed(("POST", "GET"))


def test_first_matching_path_decides_even_if_a_later_path_has_the_verb() -> None:
    # As Kernel Gateway (one Tornado handler per path): documented in routing.py.
    routes = table("POST /hello/:name", "GET /hello/world")
    assert routes.match(split_raw_path("/hello/world"), "POST") == MethodNotAllowed(("GET",))


def test_verbs_are_case_sensitive() -> None:
    assert table("GET /x").match(split_raw_path("/x"), "get") == MethodNotAllowed(("GET",))


# -- parameters -------------------------------------------------------------------------------


def test_encoded_slash_stays_inside_one_parameter() -> None:
    routes = table("GET /files/:name")
    assert split_raw_path("/files/a%2Fb") == ["files", "a%2Fb"]
    assert hit(routes, "/files/a%2Fb") == ("GET /files/:name", {"name": "a/b"})
    assert routes.match(split_raw_path("/files/a/b"), "GET") is None


@pytest.mark.parametrize(
    ("raw", "value"),
    [("/files/a+b", "a+b"), ("/files/a%20b", "a b"), ("/files/%E2%9C%93", "✓"), ("/files/:", ":")],
)
def test_parameter_values_are_url_decoded_but_plus_stays(raw: str, value: str) -> None:
    assert hit(table("GET /files/:name"), raw) == ("GET /files/:name", {"name": value})


def test_empty_segment_does_not_match_a_parameter() -> None:
    routes = table("GET /hello/:name", "GET /a/:x/b")
    assert routes.match(split_raw_path("/hello/"), "GET") is None
    assert routes.match(split_raw_path("/a//b"), "GET") is None


def test_several_parameters() -> None:
    routes = table("GET /foo/:bar/baz/:quo")
    assert hit(routes, "/foo/1/baz/2") == ("GET /foo/:bar/baz/:quo", {"bar": "1", "quo": "2"})


# -- split_raw_path ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "segments"),
    [
        ("/", [""]),
        ("/a", ["a"]),
        ("/a/b/", ["a", "b", ""]),
        ("//a", ["", "a"]),
        ("/a%2Fb/c", ["a%2Fb", "c"]),
        ("a/b", ["a", "b"]),
    ],
)
def test_split_raw_path(raw: str, segments: list[str]) -> None:
    assert split_raw_path(raw) == segments
