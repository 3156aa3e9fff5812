"""The server-rendered admin dashboard (Jinja2), behind the same users and roles as the API."""

from fastapi import APIRouter

router = APIRouter(prefix="/dashboard", include_in_schema=False)
