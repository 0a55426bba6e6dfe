"""Mounting the UI on the app: its routes, its static files, page errors and security headers.

Called by :func:`api.app.create_app`; nothing here connects (the session key file is read, or
made, when the app is created, so a bad key stops the start, not a request).
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from api.settings import ApiSettings
from api.ui import jobpage, pages
from api.ui.access import UiState, install_page_errors
from api.ui.headers import SecurityHeaders
from api.ui.render import STATIC, Pages
from api.ui.sessions import SessionKeeper
from api.ui.settings import UiSettings


def install_ui(app: FastAPI, settings: ApiSettings, ui: UiSettings) -> None:
    app.state.ui = UiState(ui, SessionKeeper(ui, settings), Pages())
    app.include_router(pages.router)
    app.include_router(jobpage.router)
    app.mount("/static", StaticFiles(directory=STATIC, follow_symlink=False), name="static")
    install_page_errors(app)
    app.add_middleware(SecurityHeaders)
