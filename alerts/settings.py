"""Settings of the alerts service (``LINEWATCH_`` environment variables, nested with ``__``).

Rules have a default plus partial overrides per line and per camera, e.g.
``LINEWATCH_RULES__LINES='{"line-2": {"k": 2}}'``; a camera override wins over its line's.
"""

from __future__ import annotations

import math
import random
import re

from pydantic import BaseModel, Field, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings

from linewatch.common.redis_settings import RedisSettings
from linewatch.common.settings import HttpUrlText, KafkaSettings, TopicSettings, settings_config
from linewatch.detector.registry.settings import RegistryConfig
from linewatch.ingest.fleet import CameraRegionsSettings

_RNG = random.SystemRandom()
MIN_TOKEN_BITS = 256  # 32 random bytes' worth
# Values copied from examples or left as defaults, refused whatever their length.
PLACEHOLDER = re.compile(r"change-?me|changeit|example|placeholder|replace-?me|secret|password|token",
                         re.IGNORECASE)


def token_problem(token: str) -> str | None:
    """Why ``token`` cannot guard the API, or None. Strength is estimated as length x log2(alphabet of the
    character classes used), so ``secrets.token_urlsafe(32)`` (43 chars) and ``openssl rand -hex 32`` pass."""
    if not token.strip():
        return "is empty"
    if PLACEHOLDER.search(token):
        return "looks like a placeholder (change-me, example, token, ...)"
    classes = [(r"[a-z]", 26), (r"[A-Z]", 26), (r"[0-9]", 10), (r"[^A-Za-z0-9]", 33)]
    alphabet = sum(size for pattern, size in classes if re.search(pattern, token))
    bits = len(token) * math.log2(alphabet)
    if bits < MIN_TOKEN_BITS or len(set(token)) < 12:
        return (f"is too weak (about {bits:.0f} bits, {len(set(token))} distinct characters; need "
                f"{MIN_TOKEN_BITS} bits: e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))')")
    return None


class RuleConfig(BaseModel):
    """When a camera's alert fires and resolves."""

    k: int = Field(default=3, ge=1, description="Breaching frames needed among the last n.")
    n: int = Field(default=5, ge=1, le=1000, description="Window of recent frames.")
    min_score: float = Field(default=0.5, ge=0.0, le=1.0, description="Minimum normalised score of a breaching frame.")
    resolve_after: int = Field(default=5, ge=1, description="Clean frames in a row that resolve a firing alert.")
    cooldown_s: float = Field(default=30.0, ge=0.0, description="No new alert for this long after a resolution.")
    severity_levels: dict[str, float] = Field(
        default_factory=lambda: {"critical": 0.9, "major": 0.75, "minor": 0.0},
        description="Severity name -> lowest peak normalised score; the highest matching level wins.")

    @model_validator(mode="after")
    def _k_within_n(self) -> RuleConfig:
        if self.k > self.n:
            raise ValueError(f"k ({self.k}) must not exceed n ({self.n})")
        if not self.severity_levels:
            raise ValueError("severity_levels must name at least one level")
        return self

    def severity(self, peak_score: float) -> str:
        """The severity whose threshold is the highest one ``peak_score`` reaches."""
        reached = [(floor, name) for name, floor in self.severity_levels.items() if peak_score >= floor]
        if not reached:
            return min(self.severity_levels.items(), key=lambda item: item[1])[0]
        return max(reached)[1]


class RuleOverride(BaseModel):
    """A partial :class:`RuleConfig`: only the fields given replace the inherited ones."""

    k: int | None = Field(default=None, ge=1)
    n: int | None = Field(default=None, ge=1, le=1000)
    min_score: float | None = Field(default=None, ge=0.0, le=1.0)
    resolve_after: int | None = Field(default=None, ge=1)
    cooldown_s: float | None = Field(default=None, ge=0.0)
    severity_levels: dict[str, float] | None = None


class RulesSettings(BaseModel):
    """The default rule and its overrides per line and per camera."""

    default: RuleConfig = Field(default_factory=lambda: RuleConfig.model_validate({}))
    lines: dict[str, RuleOverride] = Field(default_factory=dict)
    cameras: dict[str, RuleOverride] = Field(default_factory=dict)

    def for_camera(self, line_id: str, camera_id: str) -> RuleConfig:
        """The rule of one camera: default, then its line's override, then its own."""
        merged = self.default.model_dump()
        for override in (self.lines.get(line_id), self.cameras.get(camera_id)):
            if override is not None:
                merged.update(override.model_dump(exclude_none=True))
        return RuleConfig.model_validate(merged)


class RetrySettings(BaseModel):
    """Retries of a channel's deliveries after transient failures (network errors, timeouts, HTTP 5xx/408/429).

    After a failure the channel waits ``backoff_s``, doubling per failure in a row up to ``max_backoff_s``,
    while the other channels and the consumer go on. A delivery goes to the dead-letter topic when it is
    refused permanently (other 4xx, e.g. a bad signature), or still fails ``give_up_after_s`` after it was
    first due, or after ``attempts`` tries when that is not 0.
    """

    attempts: int = Field(default=0, ge=0, description="Most tries of one delivery; 0 = no count limit.")
    backoff_s: float = Field(default=0.5, ge=0.0, description="Wait after a channel's first failure in a row.")
    max_backoff_s: float = Field(default=30.0, ge=0.0, description="Longest wait between tries of a channel.")
    give_up_after_s: float = Field(default=600.0, ge=0.0,
                                   description="A delivery still failing this long after it was due is "
                                               "dead-lettered (rides out a 10-minute outage).")

    def ceiling(self, failures: int) -> float:
        """The longest wait after ``failures`` (>= 1) transient failures in a row (exponential, capped)."""
        return float(min(self.backoff_s * 2 ** min(failures - 1, 62), self.max_backoff_s))

    def delay(self, failures: int, rng: random.Random | None = None) -> float:
        """Seconds to wait: full jitter, uniform in [0, ceiling], so clients that failed together do not
        retry in lockstep after an outage."""
        return (rng or _RNG).uniform(0.0, self.ceiling(failures))


class GuardSettings(BaseModel):
    """What a frame result must satisfy before it reaches a camera's rule (hostile or broken producers).

    A camera's first frames all count; the first ``reanchor_after`` of them within ``max_sequence_jump`` of each
    other become its *track*: the sequences it is at, with a bitmap of the last ``dedup_window`` sequences seen
    per verdict (clean, breaching), so that frames arriving out of order count and a redelivery (same sequence,
    same verdict, no newer) does not. A frame at most ``max_sequence_jump`` past the track's highest sequence,
    or within the window below it, is on the track. Any other frame (a jump, a restart, or forged) is held,
    not counted, until ``reanchor_after`` frames near each other agree; then they all count and become the
    track. A camera must therefore step its sequence by at most ``max_sequence_jump`` from frame to frame
    (linewatch cameras step by 1; a crash skips at most one ``sequence_block``, which is then held for
    ``reanchor_after - 1`` frames, not lost). A capture time more than ``max_capture_ahead_s`` ahead of this
    host's clock is refused, and no capture time moves the rule's clock (a cooldown's start) past this host's.

    Guarantee (the adversary and the argument are in ``alerts.rules``): ``reanchor_after - 1`` forged records
    of a camera, with any sequence and capture time, anywhere in its stream, cannot make a real breaching frame
    of it a redelivery, refuse it or delay it, nor start a cooldown in the future. The bounds are tied together:
    each forged frame on the track can raise its highest sequence by ``max_sequence_jump``, so
    ``max_sequence_jump x reanchor_after`` must fit in half the window; the other half keeps late frames.
    """

    dedup_window: int = Field(default=1024, ge=64, le=65536, description="Recent sequences remembered per camera.")
    max_sequence_jump: int = Field(default=128, ge=1, description="Largest step past the highest sequence seen that "
                                                                  "is taken at once; max_sequence_jump x "
                                                                  "reanchor_after <= dedup_window / 2.")
    max_capture_ahead_s: float = Field(default=300.0, ge=0.0, description="Largest accepted capture time ahead "
                                                                          "of this host's clock (clock skew).")
    reanchor_after: int = Field(default=3, ge=1, le=16, description="Frames off the camera's track (a jump or a "
                                                                    "restart) that must agree before they count; "
                                                                    "reanchor_after - 1 forged frames cannot hide "
                                                                    "a real breaching frame.")
    max_result_bytes: int = Field(default=65_536, ge=1024, description="Larger result records are dead-lettered.")
    max_text_chars: int = Field(default=256, ge=16, description="Longest line id, model version, label, ... in a "
                                                                "result; heatmap keys may be 4 times this.")

    @model_validator(mode="after")
    def _forged_steps_fit_the_window(self) -> GuardSettings:
        if self.max_sequence_jump * self.reanchor_after > self.dedup_window // 2:
            raise ValueError(f"max_sequence_jump ({self.max_sequence_jump}) x reanchor_after ({self.reanchor_after}) "
                             f"must not exceed dedup_window / 2 ({self.dedup_window // 2}): forged frames could "
                             "push real ones out of the duplicate window")
        return self


class HttpSettings(BaseModel):
    """The operator API and web page."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=8081, ge=0, le=65535)
    public_base_url: HttpUrlText = Field(default="http://127.0.0.1:8081",
                                 description="How operators reach this service; used in links.")
    metrics_public: bool = Field(default=False, description="Serve /metrics without the bearer token (only for "
                                                            "a port that is not published; see alerts/README.md).")


class AlertsSettings(BaseSettings, CameraRegionsSettings):
    """Everything ``linewatch alerts`` needs."""

    model_config = settings_config()

    kafka: KafkaSettings = Field(default_factory=lambda: KafkaSettings.model_validate({}))
    topics: TopicSettings = Field(default_factory=lambda: TopicSettings.model_validate({}))
    redis: RedisSettings = Field(default_factory=lambda: RedisSettings.model_validate({}))
    state_redis: RedisSettings | None = Field(
        default=None, description="Where alert state, outboxes and history live; None = same as redis (key prefix: "
                                  "always redis.key_prefix). Point it at its own instance with maxmemory-policy "
                                  "noeviction so heatmap memory pressure cannot evict alert state.")
    registry: RegistryConfig | None = Field(default=None, description="The model registry's database behind "
                                            "GET /api/audit and POST /api/feedback; unset: the embedded SQLite one.")
    guard: GuardSettings = Field(default_factory=lambda: GuardSettings.model_validate({}))
    rules: RulesSettings = Field(default_factory=lambda: RulesSettings.model_validate({}))
    http: HttpSettings = Field(default_factory=lambda: HttpSettings.model_validate({}))
    retry: RetrySettings = Field(default_factory=lambda: RetrySettings.model_validate({}))

    group_id: str = "linewatch-alerts"
    session_timeout_ms: int = Field(default=10000, ge=1000)
    batch_size: int = Field(default=200, ge=1, description="Records consumed before deliveries and the offset commit.")

    alertmanager_url: HttpUrlText | None = Field(default=None,
                                                 description="e.g. http://alertmanager:9093; None disables.")
    alertmanager_resend_s: float = Field(default=60.0, gt=0, description="Open alerts are re-sent this often.")
    alertname: str = "LinewatchDefect"
    webhook_url: SecretStr | None = Field(default=None, description="May hold credentials; never logged.")
    webhook_secret: SecretStr | None = Field(
        default=None, validate_default=True,
        description="Standard Webhooks signing secret: whsec_ + base64 of 32 random bytes (or any string of 32+ "
                    "characters, used as raw bytes).")
    webhook_timeout_s: float = Field(default=5.0, gt=0)
    grafana_url: HttpUrlText | None = None
    grafana_token: SecretStr | None = None
    grafana_dashboard_uid: str | None = None
    publish_alerts_topic: bool = Field(default=True, description="Also write alert events to topics.alerts.")

    api_token: SecretStr = Field(description="Bearer token of the operator API (identity 'operator').")
    api_users: dict[str, SecretStr] = Field(default_factory=dict, description="More tokens: identity -> token.")

    history_maxlen: int = Field(default=100_000, ge=100, description="Cap of the alert history stream.")
    alert_retention_s: int = Field(default=30 * 86400, ge=60,
                                   description="Alert records expire this long after resolving.")
    recent_alerts: int = Field(default=200, ge=1, description="Alerts the index keeps (open ones are always kept).")
    state_ttl_s: int = Field(default=7 * 86400, ge=60,
                             description="A camera's rule state, and an open alert's record, expire this long "
                                         "after their last write (refreshed while the camera sends frames).")
    silent_after_s: float = Field(default=900.0, gt=0,
                                  description="An open alert whose camera sent no frame for this long (wall clock) "
                                              "becomes 'silent' instead of staying firing.")
    housekeeping_s: float = Field(default=5.0, gt=0, description="How often open alerts are checked for silence.")

    @field_validator("webhook_secret")
    @classmethod
    def _webhook_needs_secret(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        if info.data.get("webhook_url") and not (value and value.get_secret_value()):
            raise ValueError("webhook_url is set but webhook_secret is not: webhook bodies must be signed")
        return value

    @field_validator("api_token")
    @classmethod
    def _token_strong(cls, value: SecretStr) -> SecretStr:
        problem = token_problem(value.get_secret_value())
        if problem:
            raise ValueError(f"api_token {problem}")
        return value

    @field_validator("api_users")
    @classmethod
    def _user_tokens_strong(cls, value: dict[str, SecretStr]) -> dict[str, SecretStr]:
        for name, token in value.items():
            problem = token_problem(token.get_secret_value())
            if problem:
                raise ValueError(f"api_users[{name!r}]: token {problem}")
            if not name.strip() or len(name) > 64:
                raise ValueError(f"api_users: identity {name[:64]!r} must be 1-64 characters")
        return value

    @model_validator(mode="after")
    def _ttl_outlives_silence(self) -> AlertsSettings:
        if self.state_ttl_s <= self.silent_after_s:
            raise ValueError("state_ttl_s must exceed silent_after_s, or an open alert could expire unseen")
        tokens = [self.api_token.get_secret_value(), *(t.get_secret_value() for t in self.api_users.values())]
        if len(set(tokens)) != len(tokens):
            raise ValueError("every API identity needs its own token")
        return self

    def state_store_redis(self) -> RedisSettings:
        """Connection of the alert state (its own instance when ``state_redis`` is set)."""
        return self.state_redis or self.redis
