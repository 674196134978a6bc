"""End-to-end Kernel Gateway notebook-http compatibility, over a real socket with real kernels.

One server per execution mode serves ``kernel_api.ipynb`` (modelled on Kernel Gateway's own
test notebook) for the whole module; every behaviour test runs against both modes.
Expectations marked "KG bug fixed" deliberately differ from Kernel Gateway 3.0.1.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from cellserve import app_from_notebook
from tests.servers import ServerThread, write_notebook

SEED_CELLS = [
    "import base64\nimport json\nimport os\nimport sys",
    # The dev-time mock request KG notebooks usually carry; harmless at seed time.
    'REQUEST = json.dumps({"body": "", "args": {}, "path": {}, "headers": {}})',
    'message = "hello {}"\npeople = []\nseed_runs = globals().get("seed_runs", 0) + 1',
    # Not annotations (KG grammar), so these are seed cells and run once at start.
    "#GET /nospace\nnospace_ran = True",
    "# get /lowercase\nlowercase_ran = True",
    "\n# GET /leading_newline\nleading_newline_ran = True",
]

ENDPOINT_CELLS = [
    '# GET /hello\nprint("hello world")',
    "# GET /hello/:person\n"
    'req = json.loads(REQUEST)\nprint("hello {}".format(req["path"]["person"]))',
    "# GET /hello/person\n"
    'req = json.loads(REQUEST)\nprint("hello {}".format(req["args"]["person"][0]))',
    "# GET /hello/persons\n"
    'req = json.loads(REQUEST)\nprint("hello {}".format(", ".join(req["args"]["person"])))',
    "# GET /message\nprint(message)",
    '# PUT /message\nreq = json.loads(REQUEST)\nmessage = req["body"]\nprint("OK")',
    '# POST /people\nreq = json.loads(REQUEST)\npeople = req["body"]\nprint(json.dumps(people))',
    '# DELETE /people/:index\nreq = json.loads(REQUEST)\ndel people[int(req["path"]["index"])]\n'
    "print(json.dumps(people))",
    '# GET /verb\nprint("GET")',
    '# POST /verb\nprint("POST")',
    '# PUT /verb\nprint("PUT")',
    '# DELETE /verb\nprint("DELETE")',
    '# PATCH /verb\nprint("PATCH")',
    "# GET /echo\nprint(REQUEST)",
    "# POST /echo\nprint(REQUEST)",
    "# PUT /echo\nprint(REQUEST)",
    "# PATCH /echo\nprint(REQUEST)",
    "# DELETE /echo\nprint(REQUEST)",
    '# POST /echo_body\nprint(json.loads(REQUEST)["body"], end="")',
    '# GET /content-type\nprint(json.loads(REQUEST)["headers"]["Content-Type"])',
    '# GET /zone/:id\nprint("zone " + json.loads(REQUEST)["path"]["id"])',
    '# GET /:kind/overview\nprint("overview of " + json.loads(REQUEST)["path"]["kind"])',
    '# GET /v1.0/info\nprint("version 1.0")',
    '# GET /stderr\nprint("I am text on stdout")\nprint("I am text on stderr", file=sys.stderr)',
    "# GET /execute_result\n1 + 1",
    "# GET /empty\nunused = 1",
    '# GET /error\nprint("lost stdout")\n1 / 0',
    "# GET /syntax_error\ndef broken(:",
    "# GET /multi\nx = 1",
    '# GET /multi\nprint("x is {}".format(x))',
    '# GET /env_kernel_gateway\nprint("KERNEL_GATEWAY is {}".format(os.environ["KERNEL_GATEWAY"]))',
    "# GET /seeded\nprint(seed_runs, nospace_ran, lowercase_ran, leading_newline_ran)",
    '# GET /created\ncreated_id = 7\nprint("made it")',
    "# ResponseInfo GET /created\n"
    'args = json.loads(REQUEST)["args"]\n'
    "print(json.dumps({\n"
    '    "status": 201,\n'
    '    "headers": {\n'
    '        "X-Custom": "yes",\n'
    '        "X-Count": 3,\n'
    '        "X-Arg": args.get("v", ["none"])[0],\n'
    '        "Location": "/things/{}".format(created_id),\n'
    "    },\n"
    "}))",
    "# GET /error_then_info\n1 / 0",
    '# ResponseInfo GET /error_then_info\ninfo_ran = True\nprint(json.dumps({"status": 201}))',
    '# GET /info_ran\nprint(globals().get("info_ran", False))',
    '# GET /info_error\nprint("body")',
    '# ResponseInfo GET /info_error\n{}["missing"]',
    '# GET /print_and_value\nprint("printed")\n42',
    "# GET /rich_value\n"
    "class Badge:\n"
    '    def _repr_html_(self):\n        return "<b>badge</b>"\n'
    '    def __repr__(self):\n        return "Badge()"\n'
    "Badge()",
    '# GET /café\nprint("coffee")',
    '# GET /json\nprint(json.dumps({"hello": "world"}))',
    "# ResponseInfo GET /json\n"
    'print(json.dumps({"headers": {"Content-Type": "application/json"}}))',
    '# GET /nocontent\nprint("this body must not be sent")',
    '# ResponseInfo GET /nocontent\nprint(json.dumps({"status": 204}))',
    '# GET /bad_info\nprint("the real body")',
    '# ResponseInfo GET /bad_info\nprint("this is not JSON")',
    '# ResponseInfo GET /orphan\nprint(json.dumps({"status": 201}))',
    '# GET /stdout_api\nsys.stdout.writelines(["a", "b\\n"])\nprint(sys.stdout.encoding.upper())',
    "# GET /semicolon\n1 + 1;",
    '# GET /semicolon_in_string\n"a;#b"',
    "# GET /history_check\nprint(json.dumps({\n"
    '    "profile_dir": get_ipython().profile_dir.location,\n'
    '    "inputs": "\\n".join(In),\n'
    "}))\n"
    "get_ipython().history_manager.writeout_cache()",
]

NOTEBOOK_CELLS = [
    ("markdown", "# GET /ghost\nprint('a markdown cell is never an endpoint')"),
    *SEED_CELLS,
    *ENDPOINT_CELLS,
    ("raw", "# GET /raw_ghost\nprint('nor is a raw cell')"),
]

EXPECTED_SWAGGER_PATHS = {
    "/hello": ["get"],
    "/hello/:person": ["get"],
    "/hello/person": ["get"],
    "/hello/persons": ["get"],
    "/message": ["get", "put"],
    "/people": ["post"],
    "/people/:index": ["delete"],
    "/verb": ["get", "post", "put", "delete", "patch"],
    "/echo": ["get", "post", "put", "patch", "delete"],
    "/echo_body": ["post"],
    "/content-type": ["get"],
    "/zone/:id": ["get"],
    "/:kind/overview": ["get"],
    "/v1.0/info": ["get"],
    "/stderr": ["get"],
    "/execute_result": ["get"],
    "/empty": ["get"],
    "/error": ["get"],
    "/syntax_error": ["get"],
    "/multi": ["get"],
    "/env_kernel_gateway": ["get"],
    "/seeded": ["get"],
    "/created": ["get"],
    "/error_then_info": ["get"],
    "/info_ran": ["get"],
    "/info_error": ["get"],
    "/print_and_value": ["get"],
    "/rich_value": ["get"],
    "/café": ["get"],
    "/json": ["get"],
    "/nocontent": ["get"],
    "/bad_info": ["get"],
    "/stdout_api": ["get"],
    "/semicolon": ["get"],
    "/semicolon_in_string": ["get"],
    "/history_check": ["get"],
}


@pytest.fixture(scope="module", params=["fast", "execute"])
def mode(request: pytest.FixtureRequest) -> str:
    """The execution mode under test."""
    return str(request.param)


@pytest.fixture(scope="module")
def client(mode: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    """A client for kernel_api.ipynb served with execution=fast or execution=execute."""
    folder = tmp_path_factory.mktemp(f"compat-{mode}")
    path = write_notebook(folder / "kernel_api.ipynb", NOTEBOOK_CELLS)
    with (
        ServerThread(app_from_notebook(path, execution=mode)) as server,
        httpx.Client(base_url=server.url, timeout=60) as http,
    ):
        yield http


def echo(response: httpx.Response) -> dict[str, object]:
    """The REQUEST value an /echo cell printed."""
    assert response.status_code == 200, response.text
    value = json.loads(response.text)
    assert isinstance(value, dict)
    return value


# -- verbs and paths ------------------------------------------------------------------------


def test_hello_world(client: httpx.Client) -> None:
    response = client.get("/hello")
    assert response.status_code == 200
    assert response.text == "hello world\n"
    assert response.headers["content-type"] == "text/plain"


@pytest.mark.parametrize("verb", ["GET", "POST", "PUT", "DELETE", "PATCH"])
def test_every_verb_reaches_its_own_cell(client: httpx.Client, verb: str) -> None:
    response = client.request(verb, "/verb")
    assert response.status_code == 200
    assert response.text == f"{verb}\n"


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/hello/governor", "hello governor\n"),
        ("/hello/Jos%C3%A9", "hello José\n"),
        ("/hello/two%20words", "hello two words\n"),
        ("/hello/a%2Fb", "hello a/b\n"),
        ("/hello/a+b", "hello a+b\n"),
    ],
)
def test_path_parameter_is_url_decoded(client: httpx.Client, path: str, expected: str) -> None:
    response = client.get(path)
    assert response.status_code == 200
    assert response.text == expected


def test_path_parameter_that_is_not_utf8_is_a_400(client: httpx.Client) -> None:
    response = client.get("/hello/%FF")
    assert response.status_code == 400
    assert response.json()["reason"] == "Bad Request"


def test_path_params_arrive_in_request(client: httpx.Client) -> None:
    assert echo(client.get("/echo"))["path"] == {}


def test_static_path_beats_parameterised_path(client: httpx.Client) -> None:
    response = client.get("/hello/person", params={"person": "governor"})
    assert response.text == "hello governor\n"
    response = client.get("/hello/persons?person=governor&person=rick")
    assert response.text == "hello governor, rick\n"


def test_deeper_first_parameter_wins(client: httpx.Client) -> None:
    assert client.get("/zone/overview").text == "zone overview\n"
    assert client.get("/zone/42").text == "zone 42\n"
    assert client.get("/city/overview").text == "overview of city\n"


def test_non_ascii_static_path(client: httpx.Client) -> None:
    response = client.get("/café")
    assert response.status_code == 200
    assert response.text == "coffee\n"


def test_annotated_path_is_matched_literally(client: httpx.Client) -> None:
    assert client.get("/v1.0/info").text == "version 1.0\n"
    response = client.get("/v1x0/info")
    assert response.status_code == 404  # KG bug fixed: KG compiles the path as a regex


@pytest.mark.parametrize("path", ["/hello/", "/verb/", "/hello//"])
def test_trailing_slash_is_another_path(client: httpx.Client, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 404
    assert response.json()["reason"] == "Not Found"


def test_markdown_and_raw_cells_are_not_endpoints(client: httpx.Client) -> None:
    assert client.get("/ghost").status_code == 404
    assert client.get("/raw_ghost").status_code == 404


def test_response_info_without_endpoint_is_ignored(client: httpx.Client) -> None:
    assert client.get("/orphan").status_code == 404


def test_non_annotations_are_seed_cells_run_once(client: httpx.Client) -> None:
    assert client.get("/nospace").status_code == 404
    assert client.get("/lowercase").status_code == 404
    assert client.get("/leading_newline").status_code == 404
    assert client.get("/seeded").text == "1 True True True\n"


# -- query arguments ------------------------------------------------------------------------


def test_query_arguments(client: httpx.Client) -> None:
    response = client.get("/echo?a=1&a=2&e=&s=hello+world&u=Jos%C3%A9&p=%2B")
    assert echo(response)["args"] == {
        "a": ["1", "2"],
        "e": [""],
        "s": ["hello world"],
        "u": ["José"],
        "p": ["+"],
    }


def test_query_arguments_for_every_verb(client: httpx.Client) -> None:
    for verb in ("GET", "POST", "PUT", "PATCH", "DELETE"):
        assert echo(client.request(verb, "/echo?k=v"))["args"] == {"k": ["v"]}


def test_no_query_arguments(client: httpx.Client) -> None:
    assert echo(client.get("/echo"))["args"] == {}


# -- request bodies -------------------------------------------------------------------------


def test_json_body_is_parsed(client: httpx.Client) -> None:
    value = {"name": "Rick", "list": [1, 2.5, None, True], "nested": {"é": "ü"}}
    assert echo(client.post("/echo", json=value))["body"] == value


def test_json_list_body_is_parsed(client: httpx.Client) -> None:
    assert echo(client.put("/echo", json=[1, "two"]))["body"] == [1, "two"]


def test_json_body_with_charset_is_parsed(client: httpx.Client) -> None:
    # KG bug fixed: KG compares Content-Type by equality and passes this as a string.
    response = client.post(
        "/echo",
        content=b'{"a": 1}',
        headers={"Content-Type": "application/json; charset=utf-8"},
    )
    assert echo(response)["body"] == {"a": 1}


def test_invalid_json_body_arrives_as_raw_string(client: httpx.Client) -> None:
    response = client.post(
        "/echo", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert echo(response)["body"] == "{not json"


def test_urlencoded_form_body(client: httpx.Client) -> None:
    response = client.post(
        "/echo",
        content=b"a=1&a=2&b=x+y&c=%C3%A9",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert echo(response)["body"] == {"a": ["1", "2"], "b": ["x y"], "c": ["é"]}


def test_multipart_fields_and_files(client: httpx.Client) -> None:
    payload = b"\x00\x01\xffbinary bytes"
    response = client.post(
        "/echo",
        data={"field": "value", "other": "é"},
        files={"upload": ("data.bin", payload, "application/octet-stream")},
    )
    value = echo(response)
    assert value["body"] == {"field": ["value"], "other": ["é"]}
    # KG bug fixed: KG drops file parts.
    assert value["files"] == [
        {
            "name": "upload",
            "filename": "data.bin",
            "content_type": "application/octet-stream",
            "size": len(payload),
            "content": base64.b64encode(payload).decode("ascii"),
        }
    ]


def test_text_body_is_a_string(client: httpx.Client) -> None:
    response = client.post(
        "/echo", content="plain ✓ text".encode(), headers={"Content-Type": "text/plain"}
    )
    assert echo(response)["body"] == "plain ✓ text"


def test_body_without_content_type_is_a_string(client: httpx.Client) -> None:
    assert echo(client.post("/echo", content=b"hola {}"))["body"] == "hola {}"


@pytest.mark.parametrize("verb", ["GET", "POST", "PUT", "PATCH", "DELETE"])
def test_empty_body_is_empty_string(client: httpx.Client, verb: str) -> None:
    assert echo(client.request(verb, "/echo"))["body"] == ""


def test_binary_body_arrives_base64_encoded(client: httpx.Client) -> None:
    payload = bytes(range(256))
    response = client.post(
        "/echo", content=payload, headers={"Content-Type": "application/octet-stream"}
    )
    value = echo(response)
    assert value["body_encoding"] == "base64"
    assert value["body"] == base64.b64encode(payload).decode("ascii")


def test_empty_json_body_is_empty_string(client: httpx.Client) -> None:
    response = client.post("/echo", content=b"", headers={"Content-Type": "application/json"})
    assert echo(response)["body"] == ""


def test_non_utf8_json_body_is_a_400(client: httpx.Client) -> None:
    # KG bug fixed: KG answers 200 with an empty body and never runs the cell.
    response = client.post(
        "/echo", content=b'{"a": "\xff\xfe"}', headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"reason", "message"}
    assert body["reason"] == "Bad Request"
    assert body["message"]


# -- headers --------------------------------------------------------------------------------


def test_header_names_are_title_cased(client: httpx.Client) -> None:
    headers = echo(client.get("/echo", headers={"x-kgc-test": "kgc"}))["headers"]
    assert isinstance(headers, dict)
    assert headers["X-Kgc-Test"] == "kgc"
    assert "x-kgc-test" not in headers
    assert headers["Host"].startswith("127.0.0.1:")


def test_repeated_header_is_a_list(client: httpx.Client) -> None:
    response = client.get("/echo", headers=[("X-Many", "one"), ("X-Many", "two")])
    headers = echo(response)["headers"]
    assert isinstance(headers, dict)
    assert headers["X-Many"] == ["one", "two"]


def test_quotes_in_headers_do_not_break_request(client: httpx.Client) -> None:
    etag = '""9a28a9262f954494a8de7442c63d6d0715ce0998""'
    headers = echo(client.get("/echo", headers={"If-None-Match": etag}))["headers"]
    assert isinstance(headers, dict)
    assert headers["If-None-Match"] == etag


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/json", "application/atom+xml", "foo"]
)
def test_content_type_header_reaches_cell(client: httpx.Client, content_type: str) -> None:
    response = client.get("/content-type", headers={"Content-Type": content_type})
    assert response.status_code == 200
    assert response.text == content_type + "\n"


# -- choosing the response body ---------------------------------------------------------------


def test_stderr_is_ignored(client: httpx.Client) -> None:
    response = client.get("/stderr")
    assert response.status_code == 200
    assert response.text == "I am text on stdout\n"


def test_execute_result_is_the_mime_bundle(client: httpx.Client) -> None:
    response = client.get("/execute_result")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/plain"
    assert response.json() == {"text/plain": "2"}


def test_stdout_wins_over_the_value(client: httpx.Client) -> None:
    assert client.get("/print_and_value").text == "printed\n"


def test_rich_value_is_the_whole_bundle(client: httpx.Client) -> None:
    response = client.get("/rich_value")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/plain"
    assert response.json() == {"text/plain": "Badge()", "text/html": "<b>badge</b>"}


def test_cell_without_output_gives_empty_body(client: httpx.Client) -> None:
    response = client.get("/empty")
    assert response.status_code == 200
    assert response.content == b""


def test_cell_error_is_a_500_with_kg_body(client: httpx.Client) -> None:
    response = client.get("/error")
    assert response.status_code == 500
    assert response.headers["content-type"] == "text/plain"
    assert response.text == "Error ZeroDivisionError: division by zero \n"


def test_syntax_error_is_a_500(client: httpx.Client) -> None:
    response = client.get("/syntax_error")
    assert response.status_code == 500
    assert response.text.startswith("Error SyntaxError: ")
    assert client.get("/hello").text == "hello world\n"


def test_sys_stdout_is_a_full_text_stream(
    client: httpx.Client, mode: str, request: pytest.FixtureRequest
) -> None:
    response = client.get("/stdout_api")
    assert response.status_code == 200, response.text
    assert response.text == "ab\nUTF-8\n"


def test_trailing_semicolon_hides_the_value(
    client: httpx.Client, mode: str, request: pytest.FixtureRequest
) -> None:
    response = client.get("/semicolon")
    assert response.status_code == 200
    assert response.content == b""


def test_semicolon_inside_a_string_does_not_hide_the_value(
    client: httpx.Client, mode: str, request: pytest.FixtureRequest
) -> None:
    response = client.get("/semicolon_in_string")
    assert response.status_code == 200
    assert response.json() == {"text/plain": "'a;#b'"}


def test_cells_with_same_annotation_are_joined(client: httpx.Client) -> None:
    assert client.get("/multi").text == "x is 1\n"


def test_kernel_gateway_env_var(client: httpx.Client) -> None:
    assert client.get("/env_kernel_gateway").text == "KERNEL_GATEWAY is 1\n"


# -- ResponseInfo -----------------------------------------------------------------------------


def test_response_info_status_and_header(client: httpx.Client) -> None:
    response = client.get("/created")
    assert response.status_code == 201
    assert response.headers["x-custom"] == "yes"
    assert response.headers["x-count"] == "3"
    assert response.text == "made it\n"


def test_response_info_sees_request_and_cell_variables(client: httpx.Client) -> None:
    response = client.get("/created", params={"v": "from the query"})
    assert response.headers["x-arg"] == "from the query"
    assert response.headers["location"] == "/things/7"


def test_response_info_does_not_run_after_a_cell_error(client: httpx.Client) -> None:
    response = client.get("/error_then_info")
    assert response.status_code == 500
    assert response.text == "Error ZeroDivisionError: division by zero \n"
    assert client.get("/info_ran").text == "False\n"


def test_response_info_error_is_a_500(client: httpx.Client) -> None:
    response = client.get("/info_error")
    assert response.status_code == 500
    assert response.text == "Error KeyError: 'missing' \n"


def test_response_info_content_type(client: httpx.Client) -> None:
    response = client.get("/json")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"hello": "world"}


def test_response_info_204_sends_no_body(client: httpx.Client) -> None:
    # KG bug fixed: KG answers 500 with a traceback when the cell printed something.
    response = client.get("/nocontent")
    assert response.status_code == 204
    assert response.content == b""


def test_response_info_printing_non_json_is_a_500(client: httpx.Client) -> None:
    # KG bug fixed: KG answers 200 with an empty body.
    response = client.get("/bad_info")
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["reason"] == "Internal Server Error"
    assert "ResponseInfo" in body["message"]


# -- 404, 405, OPTIONS ------------------------------------------------------------------------


@pytest.mark.parametrize("verb", ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
def test_unknown_path_is_a_json_404(client: httpx.Client, verb: str) -> None:
    response = client.request(verb, "/not/an/endpoint")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["reason"] == "Not Found"
    assert "message" in body


@pytest.mark.parametrize("path", ["/", "/api", "/_api/source", "/public/index.html"])
def test_paths_not_enabled_are_404(client: httpx.Client, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["reason"] == "Not Found"
    assert "message" in body


def test_known_path_with_other_verb_is_a_json_405_with_allow(client: httpx.Client) -> None:
    response = client.delete("/message")
    assert response.status_code == 405
    assert response.headers["content-type"] == "application/json"
    assert response.json()["reason"] == "Method Not Allowed"
    allowed = {verb.strip() for verb in response.headers["allow"].split(",")}
    assert {"GET", "PUT"} <= allowed
    assert "DELETE" not in allowed


def test_patch_on_a_get_only_path_is_a_405(client: httpx.Client) -> None:
    response = client.patch("/hello")
    assert response.status_code == 405
    assert "GET" in response.headers["allow"]


def test_options_on_a_known_path(client: httpx.Client) -> None:
    response = client.options("/hello")
    assert response.status_code == 200
    assert "GET" in response.headers["allow"]


# -- state ------------------------------------------------------------------------------------


def test_state_persists_between_requests(client: httpx.Client) -> None:
    response = client.put("/message", content=b"hola {}")
    assert response.status_code == 200
    assert response.text == "OK\n"
    assert client.get("/message").text == "hola {}\n"


def test_post_then_delete_people(client: httpx.Client) -> None:
    people = ["Rick", "Maggie", "Glenn", "Carol", "Daryl"]
    response = client.post("/people", json=people)
    assert response.text == '["Rick", "Maggie", "Glenn", "Carol", "Daryl"]\n'
    response = client.delete("/people/2")
    assert response.status_code == 200
    assert response.text == '["Rick", "Maggie", "Carol", "Daryl"]\n'


# -- swagger ----------------------------------------------------------------------------------


def test_swagger_spec(client: httpx.Client) -> None:
    response = client.get("/_api/spec/swagger.json")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    spec = response.json()
    assert spec["swagger"] == "2.0"
    assert spec["info"] == {"version": "0.0.0", "title": "kernel_api"}
    assert {path: sorted(verbs) for path, verbs in spec["paths"].items()} == {
        path: sorted(verbs) for path, verbs in EXPECTED_SWAGGER_PATHS.items()
    }
    success = {"responses": {"200": {"description": "Success"}}}
    assert spec["paths"]["/hello/:person"] == {"get": success}
    assert spec["paths"]["/message"] == {"get": success, "put": success}
    assert client.get("/_api/spec/swagger.json").json() == spec


# -- request data never becomes code ----------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        '"""; import os; os._exit(1) #',
        "'''; import os; os._exit(1) #",
        '\\"; import os; os._exit(1) #',
        'he said \\"hi\\" $(touch {marker}) ${{HOME}} `touch {marker}` @x \\u0041 \\n %s {{0}}',
        '"\n!touch {marker}\n%system touch {marker}\nimport os; os._exit(1)\n',
        "emoji 🎉, a NUL \x00 and a trailing backslash \\",
    ],
)
def test_crafted_body_is_data_not_code(client: httpx.Client, tmp_path: Path, payload: str) -> None:
    marker = tmp_path / "executed"
    data = payload.format(marker=marker).encode()
    response = client.post("/echo_body", content=data, headers={"Content-Type": "text/plain"})
    assert response.status_code == 200
    assert response.content == data
    assert client.get("/hello").text == "hello world\n"
    assert not marker.exists()


def test_crafted_path_and_query_are_data_not_code(client: httpx.Client) -> None:
    evil = '"; import os; os._exit(1) #'
    response = client.get("/hello/x%22%3B%20import%20os%3B%20os._exit(1)%20%23")
    assert response.text == 'hello x"; import os; os._exit(1) #\n'
    assert echo(client.get("/echo", params={"q": evil}))["args"] == {"q": [evil]}
    assert echo(client.get("/echo", headers={"X-Evil": evil}))["headers"]["X-Evil"] == evil  # type: ignore[index]
    assert client.get("/hello").text == "hello world\n"


# -- IPython history ---------------------------------------------------------------------------


def test_requests_never_reach_ipython_history(client: httpx.Client) -> None:
    secret = "s3cr3t-" + os.urandom(8).hex()
    client.post("/echo", json={"password": secret})
    client.post("/echo_body", content=secret.encode())
    client.get("/echo", params={"token": secret}, headers={"X-Secret": secret})
    client.get(f"/hello/{secret}")
    client.get("/error", params={"why": secret})

    response = client.get("/history_check")
    assert response.status_code == 200
    check = json.loads(response.text)
    assert secret not in check["inputs"]
    ipython_dir = Path(os.environ["IPYTHONDIR"]).resolve()
    profile_dir = Path(check["profile_dir"]).resolve()
    # The kernel really uses the directory we search below.
    assert profile_dir.is_relative_to(ipython_dir)
    files = [p for p in ipython_dir.rglob("*") if p.is_file()]
    leaked = [p for p in files if secret.encode() in p.read_bytes()]
    assert leaked == []
