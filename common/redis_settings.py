"""Redis connection settings (the heatmap cache is the detector's; alerts reuse them)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, SecretStr

from linewatch.common.settings import RedisUrlText


class RedisSettings(BaseModel):
    """Connection to Redis, with AUTH and TLS options passed through to redis-py."""

    url: RedisUrlText = "redis://127.0.0.1:6379/0"
    username: str | None = None
    password: SecretStr | None = None
    ssl: bool = False
    ssl_ca_certs: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    key_prefix: str = Field("lw", description="Prefix of every key linewatch writes.")
    socket_timeout_s: float = 2.0

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``redis.Redis.from_url`` (secrets revealed)."""
        kwargs: dict[str, Any] = {
            "socket_timeout": self.socket_timeout_s,
            "socket_connect_timeout": self.socket_timeout_s,
        }
        if self.username:
            kwargs["username"] = self.username
        if self.password:
            kwargs["password"] = self.password.get_secret_value()
        if self.ssl:
            kwargs.update(ssl=True, ssl_ca_certs=self.ssl_ca_certs, ssl_certfile=self.ssl_certfile,
                          ssl_keyfile=self.ssl_keyfile)
        return kwargs

    def client(self) -> Any:
        """A new ``redis.Redis`` client for these settings."""
        import redis

        url = self.url
        if self.ssl and url.startswith("redis://"):
            url = "rediss://" + url[len("redis://"):]
            kwargs = {k: v for k, v in self.client_kwargs().items() if k != "ssl"}
            return redis.Redis.from_url(url, **kwargs)
        return redis.Redis.from_url(url, **self.client_kwargs())
