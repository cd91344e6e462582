"""Numbered schema migrations, run by sqlite-utils' :class:`~sqlite_utils.Migrations`.

Each migration runs in its own transaction together with the record of it in
``_sqlite_migrations``: one that fails leaves nothing behind and stays pending. Scripts go
through ``Database.executescript``, which inside a transaction cuts them into complete
statements with ``sqlite3.complete_statement`` (so a ``;`` in a string literal or a trigger
body stays where it is) instead of committing first as ``sqlite3``'s own does.
"""

from __future__ import annotations

import datetime
import logging

from sqlite_utils import Database, Migrations

log = logging.getLogger(__name__)

migrations = Migrations("corral")


@migrations(name="0001_initial")
def _initial(db: Database) -> None:
    db.executescript(
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
        """
    )


@migrations(name="0002_desired_state")
def _desired_state(db: Database) -> None:
    db.executescript(
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
        """
    )


@migrations(name="0003_groups_version")
def _groups_version(db: Database) -> None:
    """One counter for the whole groups table, bumped by every insert, update and delete
    (triggers, so no write path can forget it). ``tag`` is drawn anew at each bump: a
    number reused after a rolled-back write never matches a spec cache filled inside it."""
    db.executescript(
        """
        CREATE TABLE groups_version (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            version INTEGER NOT NULL,
            tag BLOB NOT NULL
        );
        INSERT INTO groups_version (id, version, tag) VALUES (1, 1, randomblob(8));
        CREATE TRIGGER groups_version_insert AFTER INSERT ON groups BEGIN
            UPDATE groups_version SET version = version + 1, tag = randomblob(8);
        END;
        CREATE TRIGGER groups_version_update AFTER UPDATE ON groups BEGIN
            UPDATE groups_version SET version = version + 1, tag = randomblob(8);
        END;
        CREATE TRIGGER groups_version_delete AFTER DELETE ON groups BEGIN
            UPDATE groups_version SET version = version + 1, tag = randomblob(8);
        END;
        """
    )


@migrations(name="0004_storage_probe")
def _storage_probe(db: Database) -> None:
    """One row the writer rewrites to find out whether a full disk has space again."""
    db.executescript(
        "CREATE TABLE storage_probe (id INTEGER PRIMARY KEY CHECK (id = 1), at REAL NOT NULL)"
    )


@migrations(name="0005_artifacts")
def _artifacts(db: Database) -> None:
    """The artifact mirror: one row per imported artifact; its bytes are the file
    ``<data>/artifacts/<sha256>`` (content-addressed, shared by rows with the same bytes).
    ``arch`` is '' for artifacts of every architecture, so the identity is unique."""
    db.executescript(
        """
        CREATE TABLE artifacts (
            id TEXT PRIMARY KEY,
            kind TEXT NOT NULL,
            name TEXT NOT NULL,
            version TEXT NOT NULL,
            arch TEXT NOT NULL DEFAULT '',
            sha256 TEXT NOT NULL,
            size INTEGER NOT NULL,
            signature TEXT NOT NULL,
            created_at REAL NOT NULL,
            created_by TEXT NOT NULL,
            UNIQUE (kind, name, version, arch)
        );
        CREATE INDEX artifacts_by_version ON artifacts(kind, version, arch);
        CREATE INDEX artifacts_by_sha256 ON artifacts(sha256);
        """
    )


@migrations(name="0006_k3s_clusters")
def _k3s_clusters(db: Database) -> None:
    """K3s clusters, one per group that enables K3s (``edge_server.k3s_cluster``):
    ``k3s_members`` is each device's cluster (its highest-precedence group with a K3s
    version) and whether it carries the server label; ``k3s_clusters`` the chosen server node
    (kept while it stays a member, so a new device never takes over); ``k3s_servers`` what a
    server node reported: its join URL, token and running version."""
    db.executescript(
        """
        CREATE TABLE k3s_members (
            device_id TEXT PRIMARY KEY,
            group_name TEXT NOT NULL,
            wants_server INTEGER NOT NULL DEFAULT 0
        );
        CREATE INDEX k3s_members_by_group ON k3s_members(group_name, device_id);
        CREATE TABLE k3s_clusters (
            group_name TEXT PRIMARY KEY,
            server_id TEXT NOT NULL,
            chosen_at REAL NOT NULL
        );
        CREATE TABLE k3s_servers (
            device_id TEXT PRIMARY KEY,
            server_url TEXT NOT NULL,
            token TEXT NOT NULL,
            version TEXT NOT NULL,
            reported_at REAL NOT NULL
        );
        """
    )


@migrations(name="0007_seed_images")
def _seed_images(db: Database) -> None:
    """Seed ISOs served per token (``GET /api/v1/tokens/{id}/seed.iso``): a token's secret
    sealed with the server's token-sealing key (``edge_server.sealing``; NULL for tokens made
    before), and a base ISO's seed-slot byte offset (NULL for other artifacts)."""
    db.executescript(
        """
        ALTER TABLE reg_tokens ADD COLUMN secret_sealed TEXT;
        ALTER TABLE artifacts ADD COLUMN seed_slot_offset INTEGER;
        """
    )


# Before sqlite-utils' Migrations, applied versions were recorded in ``schema_migrations``.
_LEGACY_NAMES = {1: "0001_initial", 2: "0002_desired_state"}


def _adopt_legacy_record(db: Database) -> None:
    """Move a database's old ``schema_migrations`` record into ``_sqlite_migrations``."""
    if "schema_migrations" not in db.table_names():
        return
    with db.atomic():
        migrations.ensure_migrations_table(db)
        applied = {m.name for m in migrations.applied(db)}
        table = db.table(Migrations.migrations_table)
        for row in db.query("SELECT version FROM schema_migrations ORDER BY version"):
            name = _LEGACY_NAMES[row["version"]]
            if name not in applied:
                table.insert(
                    {
                        "migration_set": migrations.name,
                        "name": name,
                        "applied_at": str(datetime.datetime.now(datetime.UTC)),
                    }
                )
        db.execute("DROP TABLE schema_migrations")


def migrate(db: Database, steps: Migrations = migrations) -> list[str]:
    """Apply pending migrations; returns their names. Safe to call on every start."""
    _adopt_legacy_record(db)
    pending = [m.name for m in steps.pending(db)]
    for name in pending:
        log.info("applying migration %s", name)
    steps.apply(db)
    return pending
