"""The dashboard's seed ISO link: a signed-in operator downloads the same bytes the API
serves (no API token in a browser), and without a base ISO gets an HTML page saying what
to run."""

from __future__ import annotations

import hashlib
from pathlib import Path

import requests

from tests.node_image.seed_iso import make_iso
from tests.support import Server
from tests.web.conftest import Client


def test_the_dashboard_serves_the_apis_seed_iso_to_a_signed_in_operator(
    server: Server, tmp_path: Path
) -> None:
    created = server.create_token()
    link = f"/tokens/{created['id']}/seed.iso"

    # Not signed in: the link leads to the sign-in page.
    answer = requests.get(
        server.url + link, verify=str(server.ca), timeout=30, allow_redirects=False
    )
    assert answer.status_code == 303 and answer.headers["Location"].startswith("/signin")

    client = Client(server)
    missing = client.get(link)
    assert missing.status_code == 409
    assert "text/html" in missing.headers["Content-Type"]
    assert "corral image import-base" in missing.text

    base = make_iso(tmp_path)
    server.corral("image", "import-base", str(base))
    page = client.get(link)
    assert page.status_code == 200, page.text[:300]
    assert page.headers["Content-Disposition"].startswith("attachment;")
    api = server.request(
        "GET",
        f"/api/v1/tokens/{created['id']}/seed.iso",
        headers={"Authorization": f"Bearer {server.admin_token}"},
    )
    assert api.status_code == 200
    assert hashlib.sha256(page.content).digest() == hashlib.sha256(api.content).digest()
    assert len(page.content) == base.stat().st_size
    assert page.content != base.read_bytes()  # the token's seed is in the slot
