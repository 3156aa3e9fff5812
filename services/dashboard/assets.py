"""The dashboard's own static files, served by name from a fixed list (no directory walk)."""

from fastapi import APIRouter
from fastapi.responses import FileResponse

from services.dashboard.web import HERE, DashboardRoute, PageError

router = APIRouter(route_class=DashboardRoute)

STATIC = {
    "dashboard.css": "text/css",
    "dashboard.js": "text/javascript",
    "viewer.css": "text/css",
    "viewer.js": "text/javascript",
}


@router.get("/static/{name}")
def static_file(name: str) -> FileResponse:
    media_type = STATIC.get(name)
    if media_type is None:
        raise PageError(404, "No such file.")
    return FileResponse(
        HERE / "static" / name,
        media_type=media_type,
        headers={"Cache-Control": "max-age=300"},
    )
