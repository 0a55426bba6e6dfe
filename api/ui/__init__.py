"""The web UI: server-rendered pages (Jinja2) over the same store reads as the API.

Modules: :mod:`~api.ui.settings` (who may see what), :mod:`~api.ui.sessions` (the signed login
cookie), :mod:`~api.ui.csrf` (the token every state-changing form carries),
:mod:`~api.ui.headers` (CSP and friends on every response), :mod:`~api.ui.logview` (a job's log
as HTML: SGR colours, sections, line anchors), :mod:`~api.ui.pages` (the routes) and
:mod:`~api.ui.install` (what :func:`api.app.create_app` calls).
"""
