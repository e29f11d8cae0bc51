"""The PostgreSQL schema and its versioned migrations.

Every migration runs in one transaction under a transaction-scoped advisory lock, so replicas that
start at once apply each version exactly once (the others wait, then find it applied). No statement
here needs to run outside a transaction (no ``CREATE INDEX CONCURRENTLY``): a failed migration leaves
nothing half-done. Applied versions are rows of ``wr124_schema_migrations``.

Tables:

- ``wr124_documents``: one row per document, the body as ``jsonb``; the client-made id is unique per
  project (the primary key), so a retry through any replica is recognized. ``pos`` (an identity) is
  the insertion order, which breaks ties of the sort order as sqlite's global rowid does there (the
  documents of one batch share one ``created_at``).
- ``wr124_session_seqs``: one counter row per (project, session): the last ``seq`` given and the last
  ``created_at``; locked by the transaction that stores the session's documents.
- ``wr124_seq_floors``: one row per project, the highest last ``seq`` of its sessions removed whole
  (with their counters, by retention): a new counter starts above it, so no session gives a ``seq``
  twice, as sqlite's one counter never does.

Indexes serve the API's queries: a session's documents by ``seq`` (unique: no two documents share one)
and by ``created_at``; an agent's newest state (``parent_seq`` checks, keep-last); the project's
documents by ``created_at``; tags (GIN, ``@>``); ``name_pattern`` (a trigram GIN index when the
``pg_trgm`` extension can be created, which serves ``LIKE '%...%'``; otherwise a plain B-tree on the
name, which serves name order and prefix patterns but not substrings: a substring search then scans
the project's rows, as sqlite does).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    import psycopg

__all__ = ["PG_SCHEMA_VERSION", "current_version", "migrate"]

#: The advisory lock every migration holds ("wr124" in ASCII).
_LOCK_KEY: Final = 0x7772313234

_DOCUMENTS: Final = (
    """
    CREATE TABLE wr124_documents (
        project text NOT NULL,
        id text NOT NULL,
        session_id text NOT NULL,
        seq bigint NOT NULL,
        agent text,
        document_type text,
        name text NOT NULL,
        tags text[] NOT NULL,
        created_at timestamptz NOT NULL,
        updated_at timestamptz NOT NULL,
        body jsonb NOT NULL,
        pos bigint GENERATED ALWAYS AS IDENTITY,
        PRIMARY KEY (project, id)
    )
    """,
    """
    CREATE TABLE wr124_session_seqs (
        project text NOT NULL,
        session_id text NOT NULL,
        last_seq bigint NOT NULL,
        last_created timestamptz NOT NULL,
        PRIMARY KEY (project, session_id)
    )
    """,
    "CREATE UNIQUE INDEX wr124_documents_session_seq ON wr124_documents (project, session_id, seq)",
    "CREATE INDEX wr124_documents_session_created ON wr124_documents (project, session_id, created_at, pos)",
    "CREATE INDEX wr124_documents_agent_seq ON wr124_documents (project, session_id, agent, seq)",
    "CREATE INDEX wr124_documents_created ON wr124_documents (project, created_at, pos)",
    "CREATE INDEX wr124_documents_tags ON wr124_documents USING gin (tags)",
)


def _name_index(conn: psycopg.Connection[Any]) -> None:
    """Index ``name`` for ``name_pattern``: trigrams when ``pg_trgm`` can be had, else a B-tree."""
    import psycopg

    try:
        with conn.transaction():  # a savepoint: a refused extension does not abort the migration
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
            conn.execute("CREATE INDEX wr124_documents_name_trgm ON wr124_documents USING gin (name gin_trgm_ops)")
    except psycopg.Error:
        conn.execute('CREATE INDEX wr124_documents_name ON wr124_documents (project, name COLLATE "C")')


def _statements(*statements: str) -> Callable[[psycopg.Connection[Any]], None]:
    def run(conn: psycopg.Connection[Any]) -> None:
        for statement in statements:
            conn.execute(statement.encode())
    return run


#: (version, description, step), in order. Never edit an applied one: add the next.
MIGRATIONS: Final[tuple[tuple[int, str, Callable[[psycopg.Connection[Any]], None]], ...]] = (
    (1, "documents, session counters and their indexes", _statements(*_DOCUMENTS)),
    (2, "name_pattern index", _name_index),
    (3, "seq floors: a session begun again after its removal numbers on", _statements(
        "CREATE TABLE wr124_seq_floors (project text PRIMARY KEY, floor bigint NOT NULL)")),
)
#: The schema version this code writes.
PG_SCHEMA_VERSION: Final = MIGRATIONS[-1][0]


def current_version(conn: psycopg.Connection[Any]) -> int:
    """The newest schema version applied to the database (0: none)."""
    exists = conn.execute("SELECT to_regclass('wr124_schema_migrations') IS NOT NULL").fetchone()
    if not (exists and exists[0]):
        return 0
    row = conn.execute("SELECT coalesce(max(version), 0) FROM wr124_schema_migrations").fetchone()
    return int(row[0]) if row else 0


def migrate(conn: psycopg.Connection[Any]) -> list[int]:
    """Apply the migrations this database lacks; return the versions applied (by this call).

    ``conn`` is in autocommit mode; the migrations run in one transaction of their own.
    """
    if current_version(conn) >= PG_SCHEMA_VERSION:
        return []
    applied: list[int] = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS wr124_schema_migrations (version integer PRIMARY KEY,"
            " description text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {row[0] for row in conn.execute("SELECT version FROM wr124_schema_migrations")}
        for version, description, step in MIGRATIONS:
            if version in done:
                continue
            step(conn)
            conn.execute(
                "INSERT INTO wr124_schema_migrations (version, description) VALUES (%s, %s)", (version, description)
            )
            applied.append(version)
    return applied
