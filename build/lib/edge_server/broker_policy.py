"""Who may do what on the embedded broker: the peer identity from the client certificate,
the topic ACL, and the amqtt auth and topic plugins that enforce them (see ``broker.py``)."""

from __future__ import annotations

import logging
import re
import ssl
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from amqtt.contexts import Action, BaseContext
from amqtt.plugins.base import BaseAuthPlugin, BaseTopicPlugin
from amqtt.session import Session
from cryptography import x509

from registration import identity
from registration.desired import device_of_topic, nudge_topic, presence_topic, status_topic

log = logging.getLogger(__name__)

IsRevoked = Callable[[int, str], Awaitable[bool]]

IDENTITY_ATTRIBUTE = "corral.identity"
REVOCATION_CHECK_FAILED = "revocation_check_failed"
# A CN becomes a topic level: no "/", "+", "#", "$" or control characters.
_SAFE_CN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")


@dataclass(frozen=True)
class PeerIdentity:
    cn: str
    serial: int


@dataclass
class BrokerStats:
    connections_accepted: int = 0
    connections_refused: int = 0
    refusals: dict[str, int] = field(default_factory=dict)
    acl_denials: int = 0
    denials: dict[str, int] = field(default_factory=dict)

    def refuse(self, reason: str) -> None:
        self.connections_refused += 1
        self.refusals[reason] = self.refusals.get(reason, 0) + 1

    def deny(self, action: str) -> None:
        self.acl_denials += 1
        self.denials[action] = self.denials.get(action, 0) + 1


def peer_identity(ssl_object: ssl.SSLObject | None) -> PeerIdentity | None:
    """The CN and serial of the verified client certificate of a TLS connection."""
    if ssl_object is None:
        return None
    der = ssl_object.getpeercert(binary_form=True)
    if not der:
        return None
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError:  # OpenSSL verified it, but cryptography is stricter (e.g. serials)
        return None
    cn = identity.common_name(cert)
    if cn is None:
        return None
    return PeerIdentity(cn=cn, serial=cert.serial_number)


def topic_allowed(cn: str, server_identity: str, topic: str, action: Action) -> bool:
    """The ACL. ``topic`` is a filter for SUBSCRIBE and a topic for PUBLISH and RECEIVE."""
    if cn == server_identity:
        where = device_of_topic(topic)
        if where is None or "#" in where[0]:
            return False
        device, kind = where
        if action == Action.PUBLISH:
            return kind == "nudge" and "+" not in device
        return kind in ("status", "presence")
    if action == Action.PUBLISH:
        return topic in (status_topic(cn), presence_topic(cn))
    return topic == nudge_topic(cn)


class Policy:
    """Who may connect and what they may do: shared by the gate and both amqtt plugins."""

    def __init__(self, is_revoked: IsRevoked, server_identity: str) -> None:
        self.is_revoked = is_revoked
        self.server_identity = server_identity
        self.stats = BrokerStats()
        # The identity the gate admitted, per TLS connection (dropped with the connection).
        self._admitted: weakref.WeakKeyDictionary[ssl.SSLObject, PeerIdentity] = (
            weakref.WeakKeyDictionary()
        )

    async def admit(
        self, ssl_object: ssl.SSLObject, client_id: str | None, will_topic: str | None
    ) -> tuple[PeerIdentity | None, str | None]:
        """``(identity, None)`` to let the connection in, or ``(identity, reason)``."""
        peer = peer_identity(ssl_object)
        if peer is None:
            return None, "no_identity"
        if not _SAFE_CN.fullmatch(peer.cn):
            return peer, "bad_common_name"
        if client_id != peer.cn:
            return peer, "client_id_mismatch"
        if will_topic is not None and not topic_allowed(
            peer.cn, self.server_identity, will_topic, Action.PUBLISH
        ):
            return peer, "will_topic_denied"
        try:
            revoked = await self.is_revoked(peer.serial, peer.cn)
        except Exception as e:  # the deny-list is unreachable: fail closed, keep the cause
            log.error("revocation check for %s failed; refusing it", peer.cn, exc_info=e)
            return peer, REVOCATION_CHECK_FAILED
        if revoked:
            return peer, "revoked"
        self._admitted[ssl_object] = peer
        return peer, None

    def authenticate(self, session: Session) -> bool:
        peer = self._admitted.get(session.ssl_object) if session.ssl_object else None
        if peer is None or session.client_id != peer.cn:
            self.stats.refuse("not_admitted")
            return False
        session.attributes[IDENTITY_ATTRIBUTE] = peer
        return True

    def allows(self, session: Session | None, topic: str | None, action: Action | None) -> bool:
        peer = session.attributes.get(IDENTITY_ATTRIBUTE) if session else None
        allowed = (
            isinstance(peer, PeerIdentity)
            and topic is not None
            and action is not None
            and topic_allowed(peer.cn, self.server_identity, topic, action)
        )
        if not allowed:
            self.stats.deny(str(action))
            log.info(
                "MQTT %s of %r by %s denied",
                action,
                topic,
                peer.cn if isinstance(peer, PeerIdentity) else "?",
            )
        return allowed


# amqtt builds plugins from dotted class names and a config dict, so each plugin finds its
# broker's Policy here by the key the broker put in that dict.
_POLICIES: dict[str, Policy] = {}


@dataclass
class PolicyPluginConfig:
    """amqtt hands each plugin an instance of its ``Config``: here, its broker's key."""

    policy: str = ""


def _policy_of(context: BaseContext) -> Policy:
    config = context.config
    if not isinstance(config, PolicyPluginConfig):
        raise TypeError(f"expected a PolicyPluginConfig, got {type(config).__name__}")
    return _POLICIES[config.policy]


class CertificateAuthPlugin(BaseAuthPlugin):
    """Accept a session only if the gate admitted its TLS connection for this client id."""

    class Config(PolicyPluginConfig):
        pass

    def __init__(self, context: BaseContext) -> None:
        super().__init__(context)
        self.policy = _policy_of(context)

    async def authenticate(self, *, session: Session) -> bool:
        return self.policy.authenticate(session)


class DeviceAclPlugin(BaseTopicPlugin):
    """The per-device ACL, on SUBSCRIBE, PUBLISH and RECEIVE."""

    class Config(PolicyPluginConfig):
        pass

    def __init__(self, context: BaseContext) -> None:
        super().__init__(context)
        self.policy = _policy_of(context)

    async def topic_filtering(
        self,
        *,
        session: Session | None = None,
        topic: str | None = None,
        action: Action | None = None,
    ) -> bool:
        return self.policy.allows(session, topic, action)
