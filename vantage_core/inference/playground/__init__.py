"""The browser playground: static files (no build step) that call the HTTP API like any client.

``vantage serve`` calls :func:`mount_playground` on its FastAPI app: the page is at ``/`` and
its script and style sheet under ``/playground/``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

STATIC = Path(__file__).parent / "static"


def mount_playground(app: Any, prefix: str = "/playground") -> None:
    """Serve the playground page at ``/`` and its files under ``prefix`` on a FastAPI ``app``.

    Call it after the API routes are added (a route added earlier for ``/`` would win).
    """
    from fastapi.responses import FileResponse
    from fastapi.staticfiles import StaticFiles

    index = STATIC / "index.html"

    @app.get("/", include_in_schema=False)
    def playground_page() -> FileResponse:
        return FileResponse(index, media_type="text/html")

    app.mount(prefix, StaticFiles(directory=STATIC, html=True), name="playground")
