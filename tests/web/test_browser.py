"""Acceptance: an operator's day in Chromium, against a real server and a real agent."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import requests
from playwright.sync_api import Page, expect

from tests.server_process import terminate
from tests.support import Server, set_group, start_agent
from tests.web.conftest import Shots, sign_in

pytestmark = pytest.mark.slow

TIMEOUT = 30_000  # ms


def config(path: str, content: str) -> dict[str, object]:
    return {"config": [{"path": path, "content": content, "mode": 0o644}]}


def test_operator_signs_in_registers_a_device_relabels_revokes_and_signs_out(
    server: Server, page: Page, shots: Shots, tmp_path: Path
) -> None:
    set_group(server, "shop", "site=shop", config("/etc/shop.conf", "shop"))
    set_group(server, "lab", "site=lab", config("/etc/lab.conf", "lab"))

    # 1. Every page sends a stranger to the sign-in page.
    page.goto(server.url + "/devices")
    expect(page).to_have_url(re.compile(r"/signin\?next=(/|%2F)devices$"))
    shots("01-signin")
    sign_in(page, server)
    expect(page).to_have_url(server.url + "/devices")
    expect(page.locator("#no-devices")).to_contain_text("Create a registration token")
    shots("02-devices-empty")

    # 2. A token, shown once.
    page.click("nav >> text=Tokens")
    page.fill("input[name=group]", "default")
    page.fill("input[name=labels]", "site=shop")
    page.fill("input[name=uses]", "5")
    page.click("text=Create token")
    token = page.locator("#new-token").inner_text().strip()
    assert token.startswith("crl1.")
    expect(page.locator("a", has_text="Download the seed ISO")).to_have_attribute(
        "href", f"/tokens/{token.split('.')[2]}/seed.iso"
    )
    shots("03-token-created")

    # 3. An agent registers with it: the device shows up live, no reload.
    page.goto(server.url + "/devices")
    expect(page.locator("#live")).to_have_text("Live", timeout=TIMEOUT)
    page.evaluate("window.notReloaded = true")
    seed = tmp_path / "seed.json"
    seed.write_text(json.dumps({"server": server.url, "token": token}))
    state = tmp_path / "state"
    agent = start_agent(state, seed, tmp_path / "device", tmp_path / "agent.log")
    try:
        row = page.locator("table.devices tr[data-id]")
        expect(row).to_have_count(1, timeout=TIMEOUT)
        expect(row.locator("[data-cell=status] .word")).to_have_text("Online", timeout=TIMEOUT)
        expect(row.locator("[data-cell=groups]")).to_have_text("shop")
        expect(page.locator("#new-devices")).to_contain_text("1 new device matches, added below")
        assert page.evaluate("window.notReloaded") is True
        shots("04-devices-live")
        device_id = row.get_attribute("data-id")
        assert device_id

        # 4. Relabel it: its groups and its spec change.
        row.locator("a").click()
        expect(page.locator("#spec")).to_contain_text("/etc/shop.conf")
        shots("05-device")
        page.fill("textarea[name=labels]", "site=lab")
        page.click("text=Save labels")
        expect(page.locator("dd[data-cell=groups]")).to_have_text("lab")
        expect(page.locator("#spec")).to_contain_text("/etc/lab.conf")
        expect(page.locator("#spec")).not_to_contain_text("/etc/shop.conf")
        expect(page.locator("h1 [data-cell=status] .word")).to_have_text("Online", timeout=TIMEOUT)
        shots("06-device-relabelled")

        # 5. Revoke it: it shows as revoked, and its certificate is refused.
        page.click("text=Revoke…")
        expect(page.locator("h1")).to_contain_text("Revoke 1 device")
        shots("07-revoke-confirm")
        page.click("button:has-text('Revoke 1 device')")
        expect(page.locator("h1 [data-cell=status] .word")).to_have_text("Revoked")
        shots("08-device-revoked")
        answer = requests.get(
            f"{server.url}/api/v1/devices/{device_id}/whoami",
            cert=(str(state / "device.pem"), str(state / "device-key.pem")),
            verify=str(server.ca),
            timeout=30,
        )
        assert answer.status_code == 403, answer.text
    finally:
        terminate(agent, 10)

    # Bulk: "select all N matching", and the confirmation states the count.
    page.goto(server.url + "/devices?selector=site%3Dlab")
    page.check("input[name=all]")
    page.select_option("select[name=action]", "delete")
    page.click("text=Apply to selected…")
    expect(page.locator("h1")).to_have_text("Delete 1 device?")
    shots("09-bulk-confirm")
    page.click("text=Cancel")
    expect(page.locator("table.devices tr[data-id]")).to_have_count(1)

    for name in ("/", "/groups", "/artifacts", "/tokens"):
        page.goto(server.url + name)
        shots("10-page" + name.replace("/", "-").rstrip("-"))

    # 6. Sign out: every page sends us back to sign in.
    page.click("text=Sign out")
    expect(page).to_have_url(server.url + "/signin")
    for name in ("/", "/devices", f"/devices/{device_id}", "/tokens"):
        page.goto(server.url + name)
        expect(page.locator("h1")).to_have_text("Sign in to Corral")
