"""``linewatch models migrate``: upgrade the registry database to the revision this linewatch needs.

Run it once per upgrade of linewatch, before the services start (on Kubernetes the pods' init
container ``registry-migrate`` does); services only check the revision and refuse a database that is
not at it.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

from linewatch.detector.registry.cli_common import guarded, load


def register_migrate(actions: Any) -> None:
    """Add ``migrate`` to the ``linewatch models`` actions."""
    p = actions.add_parser("migrate", help="upgrade the registry database schema (run before the services start)",
                           description="Applies the schema revisions this linewatch carries. A database made "
                                       "before revisions existed is recognised and keeps its rows.")
    p.add_argument("--database-url", "--database", dest="database_url", metavar="URL",
                   help="SQLAlchemy URL of the registry (default: LINEWATCH_REGISTRY__DATABASE_URL or "
                        "sqlite:///.linewatch/registry.db)")
    p.set_defaults(func=guarded(_migrate))


def _migrate(args: argparse.Namespace) -> int:
    from linewatch.detector.registry.migrations.upgrade import migrate

    # Alembic announces each plugin it loads; keep the log to the revisions it runs.
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    url = load(args).registry.database_url
    done = migrate(url)
    where = _without_password(url)
    if done.before == done.after:
        print(f"registry database {where} is at revision {done.after}; nothing to do")
    else:
        adopted = " (tables made before migrations recognised and kept)" if done.adopted_previous_schema else ""
        print(f"registry database {where} migrated from revision {done.before or 'none'} to {done.after}{adopted}")
    return 0


def _without_password(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)
