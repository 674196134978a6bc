"""The docs page in a real headless Chromium: loads offline, lists operations, tries one."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from cellserve import app_from_notebook
from tests.servers import ServerThread

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "docs-page.png"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        CHROMIUM is None and not os.environ.get("CI"),
        reason="needs Debian's chromium (CI installs it)",
    ),
]


def test_docs_page_lists_operations_and_try_it_out_works(notebook) -> None:
    from playwright.sync_api import sync_playwright

    path = notebook(
        [
            ("markdown", "Greet someone\n\nAnswers with a greeting for the name in the path."),
            "# GET /hello/:name\nimport json\nprint('hello', json.loads(REQUEST)['path']['name'])",
            ("markdown", "Health of the model"),
            "# GET /status\nprint('ok')",
        ],
        name="greeter.ipynb",
    )
    with ServerThread(app_from_notebook(path, auth_token="tok")) as server, sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            external: list[str] = []
            page.on(
                "request",
                lambda r: external.append(r.url) if not r.url.startswith(server.url) else None,
            )
            page.goto(f"{server.url}/docs?token=tok")
            page.wait_for_selector(".opblock", timeout=30_000)
            summaries = page.locator(".opblock-summary-path").all_inner_texts()
            assert any("/hello/{name}" in s.replace("\u200b", "") for s in summaries)
            assert any("/status" in s for s in summaries)

            page.locator(".opblock-summary", has_text="Greet someone").click()
            page.locator("input[placeholder='name']").fill("browser")
            page.locator("button.execute").click()
            body = page.locator(".live-responses-table .response-col_description pre").first
            body.wait_for(timeout=30_000)
            assert "hello browser" in body.inner_text()
            if os.environ.get("CELLSERVE_UPDATE_SCREENSHOT"):
                page.screenshot(path=str(SCREENSHOT), full_page=True)
            assert external == []
        finally:
            browser.close()


def test_try_it_out_starts_from_the_declared_examples(notebook) -> None:
    from playwright.sync_api import sync_playwright

    declaration = (
        "Price a house\n\n```yaml\nquery:\n  rooms: {type: integer, example: 4}\n"
        "body:\n  schema: {type: object, required: [size], properties: {size: {type: number}}}\n"
        "  example: {size: 120}\n```"
    )
    path = notebook(
        [
            ("markdown", declaration),
            "# POST /price\nimport json\nr = json.loads(REQUEST)\n"
            "print(r['body']['size'] * int(r['args']['rooms'][0]))",
        ],
        name="prices.ipynb",
    )
    with ServerThread(app_from_notebook(path)) as server, sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.goto(f"{server.url}/docs")
            page.locator(".opblock-summary", has_text="Price a house").click()
            body = page.locator(".body-param textarea")
            body.wait_for(timeout=30_000)
            assert json.loads(body.input_value()) == {"size": 120}
            assert page.locator("input[placeholder='rooms']").input_value() == "4"
            # The prefilled request passes the declaration and reaches the cell.
            page.locator("button.execute").click()
            answer = page.locator(".live-responses-table .response-col_description pre").first
            answer.wait_for(timeout=30_000)
            assert answer.inner_text().strip() == "480"
        finally:
            browser.close()
