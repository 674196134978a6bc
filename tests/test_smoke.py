import httpx
import pytest

from cellserve import app_from_notebook
from tests.servers import ServerThread, serving


@pytest.mark.anyio
async def test_serves_a_cell_over_a_real_socket(notebook) -> None:
    app = app_from_notebook(notebook(["x = 1", "# GET /x\nprint(x)"]))
    async with serving(app) as url, httpx.AsyncClient(base_url=url) as client:
        response = await client.get("/x")
    assert response.status_code == 200
    assert response.text == "1\n"


def test_server_thread(notebook) -> None:
    with ServerThread(app_from_notebook(notebook(["# GET /x\nprint(2)"]))) as server:
        assert httpx.get(server.url + "/x").text == "2\n"
