"""The server-rendered admin dashboard (Jinja2), behind the same users and roles as the API.

Pages live under ``/dashboard``: sign-in (``login``), read pages (``pages``, ``config``), the
buttons (``actions``), the report viewer (``viewer``, docs/VIEWER.md) and the static files
(``assets``). See docs/DASHBOARD.md.
"""

from fastapi import APIRouter

from services.dashboard import actions, assets, config, login, pages, viewer
from services.dashboard.web import PREFIX

router = APIRouter(prefix=PREFIX, include_in_schema=False)
for _module in (login, pages, config, actions, assets, viewer):
    router.include_router(_module.router)
