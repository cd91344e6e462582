"""Server settings: one frozen dataclass, built in one place from flags, environment and file.

Precedence, highest first: command-line flags, ``CORRAL_*`` environment variables,
``<data-dir>/config.json``, built-in defaults.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_server import addresses
from edge_server.cli import duration
from edge_server.errors import ServerError

DEFAULT_LISTEN = "0.0.0.0:8443"  # noqa: S104 - devices on the LAN must reach the appliance
DEFAULT_MQTT_LISTEN = "0.0.0.0:8883"  # noqa: S104
DEFAULT_DATA_DIR = "./corral-data"


class SettingsError(ServerError):
    code = "bad_settings"


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    host: str = "0.0.0.0"  # noqa: S104
    port: int = 8443
    sans: tuple[str, ...] = ()
    public_url: str | None = None
    register_failures_per_minute: int = 20
    max_body_bytes: int = 64 * 1024
    guard_blocking: bool = False
    mqtt_host: str = "0.0.0.0"  # noqa: S104
    mqtt_port: int = 8883
    mqtt_url: str | None = None
    mqtt_public_url: str | None = None
    mqtt_share_group: str = "corral"
    mqtt_crl_path: Path | None = None
    #: How long a device certificate is valid; agents renew it after two thirds.
    device_cert_lifetime: dt.timedelta = dt.timedelta(days=365)
    #: The server renews its own certificates (HTTPS, MQTT client) this close to expiry,
    server_cert_renew_before: dt.timedelta = dt.timedelta(days=30)
    #: checking at start and then this often.
    server_cert_check_interval: dt.timedelta = dt.timedelta(days=1)

    @property
    def embedded_broker(self) -> bool:
        return self.mqtt_url is None

    @property
    def channel_url(self) -> str:
        """Where the server's own MQTT client connects."""
        if self.mqtt_url:
            return self.mqtt_url
        return f"mqtts://{addresses.connect_host(self.mqtt_host)}:{self.mqtt_port}"

    def device_mqtt_url(self, api_host: str) -> str:
        """The MQTT URL handed to devices: explicit, or the host they reached the API on."""
        if self.mqtt_public_url:
            return self.mqtt_public_url
        if self.mqtt_url:
            return self.mqtt_url
        host = api_host.rsplit(":", 1)[0] if api_host.count(":") == 1 else api_host
        if api_host.startswith("["):
            host = api_host.split("]")[0] + "]"
        return f"mqtts://{host}:{self.mqtt_port}"

    @property
    def db_path(self) -> Path:
        return self.data_dir / "corral.db"

    @property
    def pki_dir(self) -> Path:
        return self.data_dir / "pki"

    @property
    def artifacts_dir(self) -> Path:
        """The artifact mirror's files, named by their sha256 (``store/artifacts.py``)."""
        return self.data_dir / "artifacts"

    @property
    def admin_token_path(self) -> Path:
        return self.data_dir / "admin-token"

    @property
    def mqtt_config_path(self) -> Path:
        """Written by ``corral broker mosquitto-config``: share group and CRL path."""
        return self.data_dir / "mqtt.json"

    @property
    def client_config_path(self) -> Path:
        return self.data_dir / "client.json"

    @property
    def local_url(self) -> str:
        """The URL the local CLI uses to reach this server."""
        return f"https://{addresses.connect_host(self.host)}:{self.port}"

    def server_names(self) -> list[str]:
        """Names and addresses the server certificate covers."""
        return addresses.server_names(self.host, self.sans)


def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise SettingsError(f"--listen must be HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError as e:
        raise SettingsError(f"{name} must be an integer, got {raw!r}") from e


def _duration(name: str, flag: str | None, config: dict[str, Any], default: str) -> dt.timedelta:
    """A duration (``90s``, ``24h``, ``365d``) from a flag, ``CORRAL_<NAME>`` or the config."""
    raw = flag or os.environ.get(f"CORRAL_{name.upper()}") or config.get(name) or default
    try:
        seconds = duration.parse(str(raw))
    except ServerError as e:
        raise SettingsError(f"{name}: {e.detail}") from e
    if seconds is None:
        raise SettingsError(f"{name} must be a duration like 90s, 24h or 365d, not {raw!r}")
    return dt.timedelta(seconds=seconds)


def load(
    data_dir: str | None = None,
    listen: str | None = None,
    sans: list[str] | None = None,
    public_url: str | None = None,
    mqtt_listen: str | None = None,
    mqtt_url: str | None = None,
    mqtt_public_url: str | None = None,
    device_cert_lifetime: str | None = None,
) -> Settings:
    """Build the settings once, from flags (arguments), environment and the config file."""
    root = Path(data_dir or os.environ.get("CORRAL_DATA_DIR") or DEFAULT_DATA_DIR).absolute()
    config: dict[str, Any] = {}
    config_file = root / "config.json"
    if config_file.exists():
        try:
            config = json.loads(config_file.read_text())
        except (OSError, ValueError) as e:
            raise SettingsError(f"cannot read {config_file}: {e}") from e
    host, port = parse_listen(
        listen or os.environ.get("CORRAL_LISTEN") or config.get("listen") or DEFAULT_LISTEN
    )
    mqtt_host, mqtt_port = parse_listen(
        mqtt_listen
        or os.environ.get("CORRAL_MQTT_LISTEN")
        or config.get("mqtt_listen")
        or DEFAULT_MQTT_LISTEN
    )
    external: dict[str, Any] = {}
    if (root / "mqtt.json").exists():
        try:
            external = json.loads((root / "mqtt.json").read_text())
        except (OSError, ValueError) as e:
            raise SettingsError(f"cannot read {root / 'mqtt.json'}: {e}") from e
    env_sans = [s for s in os.environ.get("CORRAL_SANS", "").split(",") if s]
    return Settings(
        data_dir=root,
        host=host,
        port=port,
        sans=tuple(sans or env_sans or config.get("sans", [])),
        public_url=public_url or os.environ.get("CORRAL_PUBLIC_URL") or config.get("public_url"),
        register_failures_per_minute=_env_int(
            "CORRAL_REGISTER_FAILURES_PER_MINUTE",
            int(config.get("register_failures_per_minute", 20)),
        ),
        guard_blocking=os.environ.get("CORRAL_GUARD_BLOCKING") == "1",
        mqtt_host=mqtt_host,
        mqtt_port=mqtt_port,
        mqtt_url=mqtt_url or os.environ.get("CORRAL_MQTT_URL") or config.get("mqtt_url"),
        mqtt_public_url=mqtt_public_url
        or os.environ.get("CORRAL_MQTT_PUBLIC_URL")
        or config.get("mqtt_public_url"),
        mqtt_share_group=os.environ.get("CORRAL_MQTT_SHARE_GROUP")
        or external.get("share_group")
        or "corral",
        mqtt_crl_path=Path(external["crl"]) if external.get("crl") else None,
        device_cert_lifetime=_duration(
            "device_cert_lifetime", device_cert_lifetime, config, "365d"
        ),
        server_cert_renew_before=_duration("server_cert_renew_before", None, config, "30d"),
        server_cert_check_interval=_duration("server_cert_check_interval", None, config, "1d"),
    )
