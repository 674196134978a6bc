"""The interactive docs page: Swagger UI shipped inside cellserve's own package, no CDN.

The files in ``swagger_ui/`` are copied unchanged from the upstream ``swagger-ui-dist``
distribution (see the README there). They live in cellserve's namespace, so no other
package's Swagger UI can replace them.

The page reads the OpenAPI document next to it and, when opened as ``/docs?token=X``, sends
that token with every call it makes (the spec, and "Try it out" requests). It is served with
``Referrer-Policy: no-referrer``, so those calls carry no ``Referer`` with the token in it.
"""

from __future__ import annotations

import html
import json
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.staticfiles import StaticFiles

_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title} · cellserve</title>
<link rel="stylesheet" href="{assets}/swagger-ui.css{query}">
</head>
<body>
<div id="swagger-ui"></div>
<script src="{assets}/swagger-ui-bundle.js{query}"></script>
<script src="{assets}/swagger-ui-standalone-preset.js{query}"></script>
<script>
const token = new URLSearchParams(window.location.search).get("token");
window.ui = SwaggerUIBundle({{
  {source}
  dom_id: "#swagger-ui",
  deepLinking: true,
  tryItOutEnabled: true,
  requestInterceptor: (request) => {{
    if (token) {{ request.headers["Authorization"] = "Bearer " + token; }}
    return request;
  }},
  presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset],
  layout: {layout},
}});
</script>
</body>
</html>
"""


def docs_assets() -> StaticFiles:
    """The bundled Swagger UI files, served under the docs page's ``assets`` path."""
    return StaticFiles(packages=[("cellserve", "swagger_ui")])


def docs_page(
    request: Request, *, title: str, specs: list[tuple[str, str]], assets: str
) -> HTMLResponse:
    """The docs page; `specs` are (name, URL) pairs of OpenAPI documents, `assets` a URL."""
    token = request.query_params.get("token")
    query = "?token=" + html.escape(quote(token, safe="")) if token else ""
    # One spec needs no top bar; several get the standalone layout's spec picker.
    if len(specs) == 1:
        source = "url: " + json.dumps(specs[0][1]) + ","
        layout = '"BaseLayout"'
    else:
        source = "urls: " + json.dumps([{"name": n, "url": u} for n, u in specs]) + ","
        layout = '"StandaloneLayout"'
    page = _PAGE.format(
        title=html.escape(title),
        assets=assets,
        query=query,
        source=source.replace("</", "<\\/"),
        layout=layout,
    )
    return HTMLResponse(page, headers={"Referrer-Policy": "no-referrer"})
