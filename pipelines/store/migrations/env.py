"""Alembic environment for the run store, driven by :func:`pipelines.store.db.migrate`.

The URL arrives in ``config.attributes["sandpit_url"]``, never from the environment or an
ini file, so migrating a test database cannot touch another one.
"""

from __future__ import annotations

from alembic import context
from sqlmodel import SQLModel

import pipelines.store.models  # noqa: F401  (registers the tables on SQLModel.metadata)
from pipelines.store.db import make_engine

target_metadata = SQLModel.metadata


def run_migrations() -> None:
    url = context.config.attributes.get("sandpit_url") or context.config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("no database URL given to the migrations (use pipelines.store.db.migrate)")
    if context.is_offline_mode():
        context.configure(url=url, target_metadata=target_metadata, literal_binds=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            context.configure(
                connection=connection,
                target_metadata=target_metadata,
                render_as_batch=connection.dialect.name == "sqlite",
                compare_type=True,
            )
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


run_migrations()
