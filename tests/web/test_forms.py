"""The dashboard's forms over plain HTTP, as a browser without JavaScript posts them:
CSRF, the sign-in rate limit, cookies, bad input shown inline with nothing saved."""

from __future__ import annotations

import pytest
import requests

from tests.support import Machine, Server
from tests.web.conftest import Client, admin_password, csrf


def tokens_in_store(server: Server) -> int:
    return len(server.checked("GET", "/api/v1/tokens")["items"])


def test_a_forged_post_without_the_csrf_token_is_refused_and_changes_nothing(
    shared_server: Server,
) -> None:
    client = Client(shared_server)
    before = tokens_in_store(shared_server)
    form = {"group": "default", "ttl": "1", "uses": "1", "labels": ""}
    for forged in (form, {**form, "csrf": "not-the-token"}, {**form, "csrf": ""}):
        answer = client.post("/tokens", forged)
        assert answer.status_code == 403, answer.text
        assert "text/html" in answer.headers["Content-Type"]
        assert "security token" in answer.text
    assert tokens_in_store(shared_server) == before
    # The same form with the session's token goes through.
    assert client.post("/tokens", {**form, "csrf": client.csrf}).status_code == 201
    assert tokens_in_store(shared_server) == before + 1


def test_the_session_cookie_is_secure_httponly_and_samesite(
    shared_server: Server, request: pytest.FixtureRequest
) -> None:
    http = requests.Session()
    request.addfinalizer(http.close)
    ca = str(shared_server.ca)
    page = http.get(shared_server.url + "/signin", verify=ca, timeout=30)
    answer = http.post(
        shared_server.url + "/signin",
        data={
            "csrf": csrf(page.text),
            "username": "admin",
            "password": admin_password(shared_server),
            "next": "/devices",
        },
        allow_redirects=False,
        verify=ca,
        timeout=30,
    )
    assert answer.status_code == 303
    assert answer.headers["Location"] == "/devices"
    cookies = answer.raw.headers.getlist("Set-Cookie")
    cookie = next(c for c in cookies if c.startswith("corral_session="))
    for attribute in ("Secure", "HttpOnly", "SameSite=Strict", "Path=/"):
        assert attribute in cookie, cookie


def test_sign_in_without_its_form_token_is_refused(shared_server: Server) -> None:
    answer = requests.post(
        shared_server.url + "/signin",
        data={"username": "admin", "password": admin_password(shared_server)},
        verify=str(shared_server.ca),
        allow_redirects=False,
        timeout=30,
    )
    assert answer.status_code == 403
    assert "corral_session" not in answer.headers.get("Set-Cookie", "")


def test_failed_sign_ins_are_limited_per_account_even_with_the_right_password(
    server: Server, request: pytest.FixtureRequest
) -> None:
    http = requests.Session()
    request.addfinalizer(http.close)
    ca = str(server.ca)

    def attempt(password: str) -> requests.Response:
        token = csrf(http.get(server.url + "/signin", verify=ca, timeout=30).text)
        return http.post(
            server.url + "/signin",
            data={"csrf": token, "username": "admin", "password": password},
            allow_redirects=False,
            verify=ca,
            timeout=30,
        )

    for _ in range(5):
        wrong = attempt("wrong")
        assert wrong.status_code == 401
        assert "wrong username or password" in wrong.text
    limited = attempt(admin_password(server))
    assert limited.status_code == 429
    assert "too many failed sign-ins" in limited.text


def test_bad_form_input_is_shown_inline_and_nothing_is_saved(shared_server: Server) -> None:
    client = Client(shared_server)
    before = tokens_in_store(shared_server)
    good = {"csrf": client.csrf, "group": "default", "ttl": "24", "uses": "1", "labels": ""}
    for field, value, message in (
        ("ttl", "-5", "must be between 1 and"),
        ("ttl", "soon", "is not a whole number"),
        ("group", "nosuchgroup", "there is no group"),
        ("labels", "site", "is not key=value"),
        ("labels", "bad key!=x", "label"),
    ):
        answer = client.post("/tokens", {**good, field: value})
        assert answer.status_code == 400, (field, value)
        assert message in answer.text, (field, value, answer.text[:2000])
        assert 'aria-invalid="true"' in answer.text
    assert tokens_in_store(shared_server) == before

    groups_before = shared_server.checked("GET", "/api/v1/groups")["items"]
    answer = client.post(
        "/groups", {"csrf": client.csrf, "name": "eu", "selector": "!site=eu", "priority": "0"}
    )
    assert answer.status_code == 400
    assert 'role="alert"' in answer.text
    assert shared_server.checked("GET", "/api/v1/groups")["items"] == groups_before

    answer = client.get("/devices?selector=%21a%3Db")
    assert answer.status_code == 200
    assert "selector-error" in answer.text


def test_pages_are_html_and_the_api_stays_json(shared_server: Server) -> None:
    client = Client(shared_server)
    missing = client.get("/devices/dev-nosuchdevice")
    assert missing.status_code == 404
    assert "text/html" in missing.headers["Content-Type"]
    api = client.get("/api/v1/devices/dev-nosuchdevice")
    assert api.status_code == 401
    assert api.json()["error"] == "missing_api_token"
    stranger = requests.get(
        shared_server.url + "/tokens",
        verify=str(shared_server.ca),
        allow_redirects=False,
        timeout=30,
    )
    assert stranger.status_code == 303
    assert stranger.headers["Location"].startswith("/signin?next=")


def test_bulk_label_of_all_matching_states_the_count_and_changes_only_after_confirming(
    shared_server: Server,
) -> None:
    token = shared_server.create_token(labels={"bulk": "yes"}, max_uses=10)["token"]
    ids = []
    for _ in range(3):
        answer = shared_server.request("POST", "/api/v1/register", json=Machine().request(token))
        assert answer.status_code in (200, 201), answer.text
        ids.append(answer.json()["device_id"])
    client = Client(shared_server)
    form = {
        "csrf": client.csrf,
        "all": "1",
        "selector": "bulk=yes",
        "q": "",
        "action": "label",
        "labels": "tier=gold",
    }
    confirm = client.post("/devices/bulk", form)
    assert confirm.status_code == 200
    assert "Set labels on 3 devices (tier=gold)?" in confirm.text
    labels = {d: shared_server.checked("GET", f"/api/v1/devices/{d}")["labels"] for d in ids}
    assert all("tier" not in v for v in labels.values())

    done = client.post("/devices/bulk", {**form, "confirmed": "1"})
    assert done.status_code == 303
    assert done.headers["Location"] == "/devices?done=3&action=label"
    for device_id in ids:
        assert shared_server.checked("GET", f"/api/v1/devices/{device_id}")["labels"] == {
            "bulk": "yes",
            "tier": "gold",
        }
    forged = client.post("/devices/bulk", {**form, "confirmed": "1", "csrf": "x"})
    assert forged.status_code == 403


def test_the_password_hashes_are_kept_private(shared_server: Server) -> None:
    for path in shared_server.data_dir.glob("corral.db*"):
        assert path.stat().st_mode & 0o777 == 0o600, path
