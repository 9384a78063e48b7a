"""The operator web page (it holds no data: it logs in with the token) and ``/api/whoami``."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from linewatch.alerts.routes.deps import User

WEB_DIR = Path(__file__).resolve().parents[1] / "web"

router = APIRouter()


@router.get("/", include_in_schema=False)
def index() -> FileResponse:
    """The single page; ``no-cache`` so an upgrade's page is picked up at once."""
    return FileResponse(WEB_DIR / "index.html", headers={"Cache-Control": "no-cache"})


@router.get("/api/whoami")
def whoami(who: User) -> dict[str, str]:
    """The identity of the caller's token (the page checks a login with it)."""
    return {"identity": who}
