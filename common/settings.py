"""Settings plumbing shared by every service, and the Kafka connection and topic settings.

Every service reads ``LINEWATCH_``-prefixed environment variables (nested fields with
``__``, e.g. ``LINEWATCH_KAFKA__BOOTSTRAP_SERVERS``) and an optional ``.env`` file.
``load_settings`` turns a validation error into a :class:`ConfigError` whose one line names the field.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

from linewatch.errors import ConfigurationError

SettingsT = TypeVar("SettingsT", bound=BaseSettings)

ENV_PREFIX = "LINEWATCH_"


def settings_config() -> SettingsConfigDict:
    """The config every linewatch settings class uses."""
    return SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", env_file=".env",
        env_file_encoding="utf-8", extra="ignore",
    )


class KafkaSettings(BaseModel):
    """Connection to the Kafka cluster, with SASL/TLS passed through to librdkafka."""

    bootstrap_servers: str = "127.0.0.1:9092"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_ca_location: str | None = None
    ssl_certificate_location: str | None = None
    ssl_key_location: str | None = None
    ssl_key_password: SecretStr | None = None
    client_options: dict[str, str] = Field(
        default_factory=dict, description="Extra librdkafka options, passed through as given.")

    @field_validator("bootstrap_servers")
    @classmethod
    def _bootstrap_servers_listed(cls, value: str) -> str:
        # Empty, librdkafka would retry "no brokers" forever while the service looks healthy.
        servers = [server.strip() for server in value.split(",")]
        if not all(servers):
            raise ValueError("must list at least one broker as host:port (comma-separated, none empty)")
        return ",".join(servers)

    def client_config(self) -> dict[str, Any]:
        """The librdkafka configuration these settings describe (secrets revealed)."""
        config: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap_servers,
            "security.protocol": self.security_protocol,
        }
        optional = {
            "sasl.mechanism": self.sasl_mechanism,
            "sasl.username": self.sasl_username,
            "sasl.password": self.sasl_password.get_secret_value() if self.sasl_password else None,
            "ssl.ca.location": self.ssl_ca_location,
            "ssl.certificate.location": self.ssl_certificate_location,
            "ssl.key.location": self.ssl_key_location,
            "ssl.key.password": self.ssl_key_password.get_secret_value() if self.ssl_key_password else None,
        }
        config.update({key: value for key, value in optional.items() if value is not None})
        config.update(self.client_options)
        return config


def _url_with_scheme(schemes: tuple[str, ...]) -> AfterValidator:
    """A check that a text setting is a URL of one of ``schemes`` with a host (a typo fails at start)."""
    def check(value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in schemes or not (parts.hostname or parts.scheme == "unix"):
            raise ValueError(f"must be a {' or '.join(f'{scheme}://' for scheme in schemes)} URL with a host")
        return value

    return AfterValidator(check)


HttpUrlText = Annotated[str, _url_with_scheme(("http", "https"))]
RedisUrlText = Annotated[str, _url_with_scheme(("redis", "rediss", "unix"))]


class TopicSettings(BaseModel):
    """Topic names and how new topics are created."""

    frames: str = "frames"
    results: str = "results"
    breaches: str = "breaches"
    dead_letters: str = "dead-letters"
    alerts: str = "alerts"
    alert_dead_letters: str = "alert-dead-letters"
    partitions: int = Field(default=8, ge=1, description="Partitions for new topics; caps detector replicas.")
    replication_factor: int = Field(default=1, ge=1)


class ConfigError(ConfigurationError):
    """Invalid configuration; the message names each bad field (as its variable, or the flag that set it)."""


def describe_validation_error(exc: ValidationError, prefix: str = ENV_PREFIX,
                              flags: Mapping[str, str] | None = None) -> str:
    """One line naming each bad field (as its environment variable, or as ``flags[dotted.path]``) and why."""
    parts = []
    for error in exc.errors():
        path = [str(item) for item in error["loc"]]
        variable = prefix + "__".join(path).upper()
        flag = (flags or {}).get(".".join(path))
        name = f"{flag} ({variable})" if flag else variable
        secret = any(word in variable.lower() for word in ("password", "token", "secret"))
        shown = "***" if secret else _without_url_passwords(repr(error.get("input")))
        parts.append(f"{name}: {error['msg']} (got {shown})")
    return "invalid configuration: " + "; ".join(parts)


def _without_url_passwords(text: str) -> str:
    """``text`` with the password of any ``scheme://user:password@host`` URL in it masked."""
    return re.sub(r"(//[^/:@\s]*):[^/@\s]*@", r"\1:***@", text)


def describe_settings_error(exc: SettingsError) -> str:
    """One line for a value pydantic-settings could not parse (malformed JSON in a complex variable)."""
    cause = f": {exc.__cause__}" if exc.__cause__ is not None else ""
    return f"invalid configuration: {exc}{cause} (a complex {ENV_PREFIX}... variable must hold valid JSON)"


def load_settings(cls: type[SettingsT], flags: Mapping[str, str] | None = None, **overrides: Any) -> SettingsT:
    """Build ``cls`` from the environment plus ``overrides``, validated together.

    ``overrides`` are nested like the settings (``http={"port": 8081}``) and are deep-merged over the
    environment. ``flags`` maps a dotted field path to the command-line flag that set it, so an error
    names what the user typed.

    Raises:
        ConfigError: a value is invalid; the message names each bad one.
    """
    try:
        return cls(**{key: value for key, value in overrides.items() if value is not None})
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, flags=flags)) from None
    except SettingsError as exc:
        raise ConfigError(describe_settings_error(exc)) from None
