"""Migrations: whole statements (a ``;`` inside a literal or a trigger body stays put), one
transaction per migration, and databases recorded by the old runner adopted."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from sqlite_utils import Database, Migrations

from edge_server.store import connect
from edge_server.store.migrations import migrate, migrations


def test_a_semicolon_in_a_string_literal_or_a_trigger_body_stays_in_its_statement(
    tmp_path: Path,
) -> None:
    steps = Migrations("test")

    @steps(name="0001_notes")
    def _notes(db: Database) -> None:
        db.executescript(
            """
            CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL);
            CREATE TABLE note_log (body TEXT NOT NULL);
            INSERT INTO notes (body) VALUES ('first; not a statement');
            CREATE TRIGGER notes_logged AFTER INSERT ON notes BEGIN
                INSERT INTO note_log (body) VALUES (new.body || ';logged');
                INSERT INTO note_log (body) VALUES ('second;');
            END;
            INSERT INTO notes (body) VALUES ('a;b');
            """
        )

    db = connect(tmp_path / "m.db")
    try:
        assert migrate(db, steps) == ["0001_notes"]
        assert [r["body"] for r in db.query("SELECT body FROM notes ORDER BY id")] == [
            "first; not a statement",
            "a;b",
        ]
        assert [r["body"] for r in db.query("SELECT body FROM note_log")] == [
            "a;b;logged",
            "second;",
        ]
        assert migrate(db, steps) == []
    finally:
        db.close()


BROKEN = "CREATE TABLE one (v TEXT); INSERT INTO one VALUES ('x;y'); CREATE TABLE one (v TEXT);"
FIXED = "CREATE TABLE one (v TEXT); INSERT INTO one VALUES ('x;y'); CREATE TABLE two (v TEXT);"


def test_a_failing_migration_leaves_nothing_behind_and_stays_pending(tmp_path: Path) -> None:
    steps = Migrations("test")
    broken = True

    @steps(name="0001_two_tables")
    def _two_tables(db: Database) -> None:
        db.executescript(BROKEN if broken else FIXED)

    db = connect(tmp_path / "m.db")
    try:
        with pytest.raises(sqlite3.OperationalError, match="already exists"):
            migrate(db, steps)
        assert "one" not in db.table_names()
        assert [m.name for m in steps.pending(db)] == ["0001_two_tables"]
        broken = False
        assert migrate(db, steps) == ["0001_two_tables"]
        assert {"one", "two"} <= set(db.table_names())
    finally:
        db.close()


def test_the_real_migrations_apply_once_and_their_triggers_work(tmp_path: Path) -> None:
    db = connect(tmp_path / "m.db")
    try:
        names = [m.name for m in migrations.pending(db)]
        assert names[:2] == ["0001_initial", "0002_desired_state"]
        assert migrate(db) == names
        assert migrate(db) == []
        before = db.execute("SELECT version FROM groups_version").fetchone()[0]
        db.execute("INSERT INTO groups (name, created_at, updated_at) VALUES ('a;b', 0, 0)")
        assert db.execute("SELECT version FROM groups_version").fetchone()[0] == before + 1
    finally:
        db.close()


def test_a_database_recorded_by_the_old_runner_is_adopted(tmp_path: Path) -> None:
    db = connect(tmp_path / "m.db")
    try:
        for step in migrations.pending(db)[:2]:  # the schema as versions 1 and 2 left it
            with db.atomic():
                step.fn(db)
        db.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at REAL)")
        db.execute("INSERT INTO schema_migrations VALUES (1, 0), (2, 0)")

        later = [m.name for m in migrations.pending(connect(tmp_path / "new.db"))][2:]
        assert later[:2] == ["0003_groups_version", "0004_storage_probe"]
        assert migrate(db) == later
        assert "schema_migrations" not in db.table_names()
        assert [m.name for m in migrations.applied(db)] == [
            "0001_initial",
            "0002_desired_state",
        ] + later
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        db.close()
