"""First boot, as a list of steps: find the seed, apply its static network, put a wrong
clock right, name the machine from the seed's hostname template, then register.

:func:`register_once` is one attempt (``corral-agent register``); ``corral-agent run``
retries it with backoff until it succeeds.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from node_image.agent import clock, network
from node_image.agent.seed import Seed
from node_image.agent.state import StateDir
from node_image.errors import AgentError
from node_image.host import Host
from registration.errors import RegistrationError

if TYPE_CHECKING:
    from node_image.agent.register import Result
    from registration.protocol import Facts

log = logging.getLogger(__name__)


def hostname_for(seed: Seed, facts: Facts) -> str | None:
    """The seed's hostname template rendered from this machine's facts (None without one)."""
    from registration import templating

    if seed.hostname_template is None:
        return None
    values = templating.context(facts, seed.labels)
    fallback = (facts.dmi.get("product_uuid") or facts.hostname or "device")[:8]
    try:
        return templating.render_name(seed.hostname_template, values, fallback)
    except RegistrationError as e:
        raise AgentError(f"seed hostname_template: {e}") from e


def named_facts(seed: Seed, host: Host) -> Callable[[], Facts]:
    """The facts to register with: the host's, under the hostname the seed's template gives
    (which is also set on the machine, so the token's ``${hostname}`` names the device)."""

    def collect() -> Facts:
        facts = host.collect_facts()
        name = hostname_for(seed, facts)
        if name is None:
            return facts
        if name != facts.hostname:
            host.set_hostname(name)
            log.info("hostname set to %s (seed template %s)", name, seed.hostname_template)
        return facts.model_copy(update={"hostname": name})

    return collect


def prepare(seed: Seed, host: Host) -> None:
    """What the seed asks of the machine before it can register: a static address."""
    if seed.network is not None:
        network.apply(host, seed.network)


def register_once(
    seed: Seed, state: StateDir, host: Host, sync_wait: float = clock.SYNC_WAIT
) -> Result:
    """One registration: the clock made believable first, and again (from the server) if
    TLS still refuses the server's certificate for its dates."""
    from node_image.agent import register as register_mod  # heavy: only to register

    fingerprint = seed.token.ca_fingerprint
    clock.ensure_believable(host, seed.server, fingerprint, sync_wait)
    collect = named_facts(seed, host)
    try:
        return register_mod.register(seed, state, collect=collect)
    except AgentError as e:
        if not clock.recover(host, seed.server, fingerprint, e):
            raise
    return register_mod.register(seed, state, collect=collect)
