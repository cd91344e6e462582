"""Numbered schema migrations. Each runs in its own transaction and is recorded once."""

from __future__ import annotations

import logging

from sqlite_utils import Database

log = logging.getLogger(__name__)

MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
        CREATE TABLE users (
            id INTEGER PRIMARY KEY,
            username TEXT NOT NULL UNIQUE,
            password_hash TEXT NOT NULL,
            role TEXT NOT NULL CHECK (role IN ('admin', 'operator', 'viewer')),
            created_at REAL NOT NULL
        );
        CREATE TABLE api_tokens (
            id TEXT PRIMARY KEY,
            user_id INTEGER NOT NULL REFERENCES users(id),
            secret_hash TEXT NOT NULL,
            description TEXT NOT NULL DEFAULT '',
            created_at REAL NOT NULL,
            revoked_at REAL
        );
        CREATE TABLE reg_tokens (
            id TEXT PRIMARY KEY,
            secret_hash TEXT NOT NULL,
            group_name TEXT NOT NULL,
            labels TEXT NOT NULL DEFAULT '{}',
            name_template TEXT NOT NULL,
            description TEXT NOT NULL DEFAULT '',
            max_uses INTEGER,
            uses INTEGER NOT NULL DEFAULT 0,
            expires_at REAL,
            revoked_at REAL,
            created_at REAL NOT NULL,
            created_by TEXT NOT NULL
        );
        CREATE TABLE devices (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            machine_id TEXT NOT NULL UNIQUE,
            dmi_uuid TEXT,
            public_key_sha256 TEXT,
            group_name TEXT NOT NULL,
            labels TEXT NOT NULL DEFAULT '{}',
            labels_local TEXT NOT NULL DEFAULT '{}',
            labels_token TEXT NOT NULL DEFAULT '{}',
            labels_operator TEXT NOT NULL DEFAULT '{}',
            facts TEXT NOT NULL,
            agent_version TEXT NOT NULL DEFAULT '',
            protocol_version INTEGER NOT NULL DEFAULT 1,
            token_id TEXT,
            registered_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            reset_at REAL
        );
        CREATE TABLE certificates (
            serial INTEGER PRIMARY KEY,
            device_id TEXT NOT NULL,
            issued_at REAL NOT NULL,
            not_after REAL NOT NULL,
            revoked_at REAL
        );
        CREATE INDEX certificates_device ON certificates(device_id);
        CREATE TABLE audit (
            id INTEGER PRIMARY KEY,
            at REAL NOT NULL,
            actor TEXT NOT NULL,
            action TEXT NOT NULL,
            target TEXT NOT NULL,
            detail TEXT NOT NULL DEFAULT '{}'
        );
        """,
    ),
    (
        2,
        """
        CREATE TABLE groups (
            name TEXT PRIMARY KEY,
            selector TEXT NOT NULL DEFAULT '',
            priority INTEGER NOT NULL DEFAULT 0,
            spec TEXT NOT NULL DEFAULT '{}',
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL
        );
        CREATE TABLE device_state (
            device_id TEXT PRIMARY KEY,
            override TEXT NOT NULL DEFAULT '{}',
            spec TEXT NOT NULL DEFAULT '{}',
            spec_hash TEXT NOT NULL DEFAULT '',
            generation INTEGER NOT NULL DEFAULT 0,
            groups TEXT NOT NULL DEFAULT '[]',
            observed_generation INTEGER NOT NULL DEFAULT 0,
            conditions TEXT NOT NULL DEFAULT '[]',
            acked_seq INTEGER NOT NULL DEFAULT 0,
            online INTEGER NOT NULL DEFAULT 0,
            last_seen REAL,
            status_at REAL
        );
        CREATE TABLE status_events (
            device_id TEXT NOT NULL,
            seq INTEGER NOT NULL,
            observed_generation INTEGER NOT NULL,
            conditions TEXT NOT NULL,
            at REAL NOT NULL,
            applied_at REAL NOT NULL,
            via TEXT NOT NULL,
            PRIMARY KEY (device_id, seq)
        ) WITHOUT ROWID;
        """,
    ),
]


def migrate(db: Database) -> int:
    """Apply pending migrations; returns the schema version. Safe to call on every start."""
    db.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations"
        " (version INTEGER PRIMARY KEY, applied_at REAL)"
    )
    done = {row["version"] for row in db.query("SELECT version FROM schema_migrations")}
    for version, script in MIGRATIONS:
        if version in done:
            continue
        log.info("applying migration %s", version)
        conn = db.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in script.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(
                "INSERT INTO schema_migrations (version, applied_at)"
                " VALUES (?, unixepoch('subsec'))",
                (version,),
            )
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
    return max((v for v, _ in MIGRATIONS), default=0)
