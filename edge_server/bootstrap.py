"""First start: the data directory, the CA and server certificate, the schema, the admin.

Runs synchronously before the event loop starts, so nothing here blocks a handler.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass

from edge_server import passwords, sealing, signing
from edge_server.pki import Pki, write_private, write_public
from edge_server.settings import Settings
from edge_server.store import connect
from edge_server.store import users as users_store
from edge_server.store.migrations import migrate
from edge_server.store.rows import audit


@dataclass(frozen=True)
class AdminCredentials:
    username: str
    password: str
    api_token: str


def prepare(settings: Settings) -> AdminCredentials | None:
    """Idempotent. Returns the admin's credentials only on the very first start."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    settings.data_dir.chmod(0o700)
    pki = Pki(settings.pki_dir)
    pki.ensure(settings.server_names(), settings.server_cert_renew_before)
    signing.ensure(pki.update_signing_key_path)
    sealing.ensure(pki.token_seal_key_path)
    settings.artifacts_dir.mkdir(mode=0o700, exist_ok=True)
    write_public(
        settings.client_config_path,
        json.dumps({"url": settings.local_url, "ca": str(settings.pki_dir / "ca.pem")}).encode(),
    )
    db = connect(settings.db_path)
    try:
        migrate(db)
        if users_store.count(db):
            return None
        password = secrets.token_urlsafe(18)
        token_id, token, secret_hash = passwords.new_api_token()
        db.conn.execute("BEGIN IMMEDIATE")
        user_id = users_store.create(db, "admin", passwords.hash_password(password), "admin")
        users_store.create_api_token(db, token_id, user_id, secret_hash, "created at first start")
        audit(db, "system", "user.create", "admin", role="admin")
        db.conn.execute("COMMIT")
    finally:
        db.conn.close()
    write_private(settings.admin_token_path, token.encode() + b"\n")
    return AdminCredentials("admin", password, token)
