"""The daemon's typed configuration: ``collector.toml`` → msgspec Structs.

Every key has a default, so ``bwmon serve`` with no file at all runs a useful daemon on
loopback. Every key is documented in ``collector.toml.example`` (a test checks that both list
the same keys). A bad file raises ``ConfigError`` whose message names the key, the bad value and
what was expected; this module never prints or exits. No message holds the value of a key that
holds a secret (``SECRET_KEYS``), nor a whole table: those say what is wrong (a key's length,
a type) instead. Keys from ``BWMON_TOKEN_SECRETS`` and ``BWMON_UDP_KEYS`` meet the same rules
as the file's, checked when they are read. ``load`` makes the file's relative paths
(``storage.state_dir``, ``storage.sqlite_path``) absolute, relative to the file's directory.
``reloaded`` says what a reload (SIGHUP) puts in force and what waits for a restart.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Final, Literal

import msgspec
import msgspec.inspect
from msgspec import Meta

from collector.aggregate.alerts import DEFAULT_RULES, AlertRule
from collector.aggregate.settings import AggregateSettings
from collector.allowlist import parse_allowlist
from protocol.errors import BwmonError

Port = Annotated[int, Meta(ge=0, le=65535)]
PositiveSeconds = Annotated[float, Meta(gt=0, le=86_400)]


class ConfigError(BwmonError):
    """The configuration cannot be used; the message is meant for the operator."""


# An origin as browsers send it: scheme, host, an optional port; no path, no trailing slash.
_ORIGIN = re.compile(r"https?://(?:[a-z0-9-]+(?:\.[a-z0-9-]+)*|\[[0-9a-f:.]+\])(?::\d{1,5})?")


class ServerConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    host: str = "127.0.0.1"
    udp_port: Port = 8470
    http_port: Port = 8470
    max_connections: Annotated[int, Meta(ge=1, le=1_000_000)] = 1024
    http_request_timeout_s: PositiveSeconds = 10.0
    http_busy_head_timeout_s: PositiveSeconds = 2.0
    cors_origins: list[str] = msgspec.field(default_factory=list)

    def __post_init__(self) -> None:
        for index, origin in enumerate(self.cors_origins):
            # Browsers leave a scheme's default port out of Origin: with it, none would match.
            default_port = origin.startswith(("http://", "https://")) and origin.endswith(
                ":443" if origin.startswith("https") else ":80"
            )
            if origin != "*" and (not _ORIGIN.fullmatch(origin) or default_port):
                raise ValueError(
                    f"server.cors_origins[{index}] = {origin!r}: expected an origin such as"
                    ' "https://ops.example.com" or "http://127.0.0.1:3000" (scheme, lower-case'
                    ' host, a port unless the default one; no path), or "*"'
                )


class IngestConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    udp_receive_buffer_bytes: Annotated[int, Meta(ge=65_536, le=1 << 30)] = 8 << 20
    max_datagram_bytes: Annotated[int, Meta(ge=512, le=65_507)] = 65_507
    max_ws_message_bytes: Annotated[int, Meta(ge=512, le=64 << 20)] = 1 << 20
    max_frames_per_message: Annotated[int, Meta(ge=1, le=100_000)] = 1_000
    queue_batches: Annotated[int, Meta(ge=1, le=1_000_000)] = 4_096
    udp_drain_per_pass: Annotated[int, Meta(ge=1, le=100_000)] = 32
    hello_timeout_s: PositiveSeconds = 5.0
    heartbeat_interval_s: PositiveSeconds = 15.0
    heartbeat_timeout_s: PositiveSeconds = 10.0
    ack_interval_s: PositiveSeconds = 1.0
    max_error_replies_per_interval: Annotated[int, Meta(ge=0, le=100_000)] = 100


class LogConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


class StorageConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    backend: Literal["sqlite", "mysql", "none"] = "sqlite"
    state_dir: str = "state"
    sqlite_path: str = ""
    mysql_host: str = "127.0.0.1"
    mysql_port: Port = 3306
    mysql_user: str = "bwmon"
    mysql_password: str = ""
    mysql_database: str = "bwmon"
    auto_migrate: bool = True
    flush_interval_s: PositiveSeconds = 5.0
    statement_timeout_s: PositiveSeconds = 10.0
    queue_max_rows: Annotated[int, Meta(ge=1, le=100_000_000)] = 200_000
    spool_max_bytes: Annotated[int, Meta(ge=0, le=1 << 40)] = 256 << 20
    retry_max_s: PositiveSeconds = 30.0
    shutdown_deadline_s: PositiveSeconds = 10.0
    minute_retention_days: Annotated[float, Meta(ge=0, le=36_500)] = 7.0
    retention_interval_s: PositiveSeconds = 3600.0

    def password(self) -> str:
        """``BWMON_MYSQL_PASSWORD`` from the environment wins: keeps the secret out of files."""
        return os.environ.get("BWMON_MYSQL_PASSWORD", self.mysql_password)

    def sqlite_file(self) -> Path:
        return Path(self.sqlite_path) if self.sqlite_path else Path(self.state_dir) / "bwmon.db"


class FanoutConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    publish_interval_s: Annotated[float, Meta(ge=0.1, le=60)] = 1.0
    history_deltas: Annotated[int, Meta(ge=1, le=100_000)] = 120
    subscriber_queue_messages: Annotated[int, Meta(ge=4, le=100_000)] = 64
    heartbeat_interval_s: PositiveSeconds = 15.0
    heartbeat_timeout_s: PositiveSeconds = 10.0
    max_subscribers: Annotated[int, Meta(ge=1, le=1_000_000)] = 10_000
    redis_url: str = ""
    redis_key_prefix: Annotated[str, Meta(min_length=1, max_length=64)] = "bwmon"
    redis_retry_max_s: PositiveSeconds = 10.0

    def redis(self) -> str:
        """``BWMON_REDIS_URL`` from the environment wins: keeps a password out of files.
        Empty: no Redis, the in-process channel."""
        return os.environ.get("BWMON_REDIS_URL", self.redis_url)

    def check_redis_url(self) -> None:
        """``ConfigError`` if ``redis()`` is set but not a URL the Redis client takes."""
        url = self.redis()
        if not url:
            return
        from redis.asyncio.connection import parse_url  # the client, only when configured

        try:
            parse_url(url)
        except ValueError as exc:  # the message never holds the URL, which may hold a password
            raise ConfigError(f"fanout.redis_url (or BWMON_REDIS_URL): {exc}") from None


SECRET_MIN_CHARS: Final = 32
SECRET_MAX_CHARS: Final = 512
Secret = Annotated[str, Meta(min_length=SECRET_MIN_CHARS, max_length=SECRET_MAX_CHARS)]

# The keys that hold secrets, with the environment variable that wins over each. No message,
# log line or ``check-config`` output ever holds their values.
SECRET_KEYS: Final[dict[tuple[str, str], str]] = {
    ("storage", "mysql_password"): "BWMON_MYSQL_PASSWORD",
    ("fanout", "redis_url"): "BWMON_REDIS_URL",
    ("auth", "token_secrets"): "BWMON_TOKEN_SECRETS",
    ("auth", "udp_keys"): "BWMON_UDP_KEYS",
}
# Keys of a ``[[notify]]`` table whose values no message shows: a signing secret, headers
# (an Authorization one), and the URL (a Slack webhook's path is its credential).
NOTIFY_SECRET_KEYS: Final = frozenset({"secret", "headers", "url"})


def secret_length_problem(length: int) -> str | None:
    """Why a signing key of ``length`` characters is refused, or None: the rule for
    ``auth.token_secrets`` and ``auth.udp_keys`` wherever they come from."""
    if length < SECRET_MIN_CHARS:
        return f"{length} characters, at least {SECRET_MIN_CHARS} required"
    if length > SECRET_MAX_CHARS:
        return f"{length} characters, at most {SECRET_MAX_CHARS} allowed"
    return None


def _env_keys(name: str, configured: list[str]) -> list[str]:
    """A comma-separated environment variable wins over the configured keys (secrets stay
    out of files); its keys meet the file's rules, or ``ConfigError`` names the variable, the
    position and the length, never the key."""
    value = os.environ.get(name)
    if value is None:
        return list(configured)
    keys = [item.strip() for item in value.split(",") if item.strip()]
    for index, key in enumerate(keys):
        problem = secret_length_problem(len(key))
        if problem is not None:
            raise ConfigError(f"{name}[{index}] (environment): {problem}")
    return keys


class AuthConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Who may send and read (PROTOCOL.md §7.8, §2.3, §12.2). Off by default on loopback; a
    non-loopback ``server.host`` refuses to start until it is configured."""

    token_secrets: list[Secret] = msgspec.field(default_factory=list)
    udp_allow: list[str] = msgspec.field(default_factory=list)
    udp_keys: list[Secret] = msgspec.field(default_factory=list)
    udp_signature_max_age_s: PositiveSeconds = 60.0
    allow_unauthenticated: bool = False

    def __post_init__(self) -> None:
        try:
            parse_allowlist(self.udp_allow)
        except ValueError as exc:
            raise ValueError(f"auth.udp_allow: {exc}") from None

    def secrets(self) -> list[str]:
        """Token signing keys: ``BWMON_TOKEN_SECRETS`` (comma-separated) wins. The first mints,
        every one verifies (rotation: add the new key first, drop the old one later).
        ``ConfigError`` when a key of the variable is too short or too long."""
        return _env_keys("BWMON_TOKEN_SECRETS", self.token_secrets)

    def datagram_keys(self) -> list[str]:
        """UDP signing keys: ``BWMON_UDP_KEYS`` (comma-separated) wins; same rotation and
        length rules."""
        return _env_keys("BWMON_UDP_KEYS", self.udp_keys)


class LimitsConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Rate limits; 0 turns a limit off. Frames over a limit are counted (reason
    ``rate_limited``) and, on WebSocket, answered with an error reply."""

    source_frames_per_s: Annotated[float, Meta(ge=0, le=1e9)] = 0.0
    source_burst_frames: Annotated[int, Meta(ge=0, le=1_000_000_000)] = 0
    connection_frames_per_s: Annotated[float, Meta(ge=0, le=1e9)] = 0.0
    connection_burst_frames: Annotated[int, Meta(ge=0, le=1_000_000_000)] = 0
    max_connections_per_source: Annotated[int, Meta(ge=0, le=1_000_000)] = 128
    max_tracked_sources: Annotated[int, Meta(ge=1, le=10_000_000)] = 100_000


class AlertsConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    use_default_rules: bool = True
    rules: list[AlertRule] = msgspec.field(default_factory=list)

    def __post_init__(self) -> None:
        names = [rule.name for rule in self.rules]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"alerts.rules: rule names must be unique: {', '.join(duplicates)}")

    def effective_rules(self) -> list[AlertRule]:
        """The rules in force: the defaults (unless turned off), where a configured rule of the
        same name replaces a default one, then the other configured rules."""
        configured = {rule.name: rule for rule in self.rules}
        defaults = list(DEFAULT_RULES) if self.use_default_rules else []
        merged = [configured.pop(rule.name, rule) for rule in defaults]
        return merged + list(configured.values())


# -- notifications ([[notify]]) -------------------------------------------------------------

NotifyKind = Literal["webhook", "slack", "alertmanager"]
_SEVERITY_ORDER: Final = ("info", "warning", "critical")


class NotifySinkConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """One ``[[notify]]`` table: where alert transitions go, in which format, which ones.

    The webhook's signing secret comes from ``secret_env`` (an environment variable) or
    ``secret_file`` (a file's content, stripped) or, last, ``secret``: the file needs no
    secret in it. docs/CONFIG.md and README "Notifications" describe every key."""

    name: Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]
    kind: NotifyKind
    url: Annotated[str, Meta(pattern=r"^(https?://[^\s]+)?$", max_length=2048)] = ""
    url_env: str = ""  # an environment variable holding the URL, which then wins
    min_severity: Literal["info", "warning", "critical"] = "info"
    rules: list[str] = msgspec.field(default_factory=list)  # empty: every rule
    secret: str = ""
    secret_env: str = ""
    secret_file: str = ""
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    timeout_s: PositiveSeconds = 10.0
    queue_max: Annotated[int, Meta(ge=1, le=1_000_000)] = 10_000
    retry_initial_s: PositiveSeconds = 1.0
    retry_max_s: PositiveSeconds = 60.0
    # alertmanager only: firing alerts are posted again this often (keep it under half of
    # Alertmanager's resolve_timeout, 5 min by default); extra labels on every alert.
    resend_interval_s: PositiveSeconds = 60.0
    labels: dict[str, str] = msgspec.field(default_factory=dict)
    # Base of the generatorURL (alertmanager) and of the links in Slack messages; empty: the
    # daemon's own http://host:port.
    public_url: str = ""

    def __post_init__(self) -> None:
        where = f"notify[{self.name}]"
        if sum(bool(v) for v in (self.secret, self.secret_env, self.secret_file)) > 1:
            raise ValueError(f"{where}: give one of secret, secret_env, secret_file")
        if not (self.url or self.url_env):
            raise ValueError(f"{where}: give url or url_env")
        if self.retry_initial_s > self.retry_max_s:
            raise ValueError(f"{where}: retry_initial_s must not exceed retry_max_s")
        for label in self.labels:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", label):
                raise ValueError(f"{where}: labels: {label!r} is not a Prometheus label name")
        for header in self.headers:
            if not re.fullmatch(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+", header):
                raise ValueError(f"{where}: headers: {header!r} is not an HTTP header name")

    def target(self) -> str:
        """The URL in force: ``url_env``'s variable wins over ``url``; ``ConfigError`` when it
        is not set or not an http(s) URL (the message never holds it)."""
        if not self.url_env:
            return self.url
        value = os.environ.get(self.url_env, "").strip()
        if not re.fullmatch(r"https?://[^\s]+", value):
            raise ConfigError(
                f"notify[{self.name}].url_env: {self.url_env} does not hold an http(s) URL"
            )
        return value

    def signing_secret(self) -> bytes:
        """The webhook's HMAC key (empty: requests are not signed); ``ConfigError`` when the
        variable or the file named cannot be read, without its content."""
        if self.secret_env:
            value = os.environ.get(self.secret_env)
            if value is None:
                raise ConfigError(f"notify[{self.name}].secret_env: {self.secret_env} is not set")
            return value.encode()
        if self.secret_file:
            try:
                return Path(self.secret_file).read_text(encoding="utf-8").strip().encode()
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigError(
                    f"notify[{self.name}].secret_file: cannot read {self.secret_file}: {exc}"
                ) from None
        return self.secret.encode()

    def admits(self, rule: str, severity: str) -> bool:
        """Whether an alert of ``rule`` and ``severity`` goes to this sink."""
        if self.rules and rule not in self.rules:
            return False
        return _SEVERITY_ORDER.index(severity) >= _SEVERITY_ORDER.index(self.min_severity)


def _check_notify(sinks: list[NotifySinkConfig]) -> None:
    names = [sink.name for sink in sinks]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"notify: sink names must be unique: {', '.join(duplicates)}")


MAX_METRICS_HTTP_ROUTES: Final = 200
_Service = Annotated[str, Meta(min_length=1, max_length=128)]


class MetricsConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``/metrics``: which HTTP services and routes may be label values (docs/METRICS.md).
    A service is named in the ``service`` label when listed in ``http_services`` or, with no
    list, while it is among the first ``max_http_services`` seen; any other counts under
    ``other``. Routes have series of their own only when listed (``"service:/route"``)."""

    http_services: Annotated[list[_Service], Meta(max_length=1_000)] = msgspec.field(
        default_factory=list
    )
    max_http_services: Annotated[int, Meta(ge=0, le=1_000)] = 20
    http_routes: Annotated[list[str], Meta(max_length=MAX_METRICS_HTTP_ROUTES)] = msgspec.field(
        default_factory=list
    )

    def __post_init__(self) -> None:
        for index, entry in enumerate(self.http_routes):
            service, colon, route = entry.partition(":")
            if (
                not (service and colon and route)
                or len(entry) > 300
                or any(c.isspace() for c in entry)
            ):
                raise ValueError(
                    f"metrics.http_routes[{index}] = {entry!r}: expected"
                    ' "service:route" such as "checkout:/v1/orders/{id}" (no spaces)'
                )

    def routes(self) -> list[tuple[str, str]]:
        """``http_routes`` as (service, route) pairs."""
        pairs = []
        for entry in self.http_routes:
            service, _, route = entry.partition(":")
            pairs.append((service, route))
        return pairs


class Config(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    server: ServerConfig = msgspec.field(default_factory=ServerConfig)
    ingest: IngestConfig = msgspec.field(default_factory=IngestConfig)
    aggregate: AggregateSettings = msgspec.field(default_factory=AggregateSettings)
    alerts: AlertsConfig = msgspec.field(default_factory=AlertsConfig)
    storage: StorageConfig = msgspec.field(default_factory=StorageConfig)
    fanout: FanoutConfig = msgspec.field(default_factory=FanoutConfig)
    auth: AuthConfig = msgspec.field(default_factory=AuthConfig)
    limits: LimitsConfig = msgspec.field(default_factory=LimitsConfig)
    log: LogConfig = msgspec.field(default_factory=LogConfig)
    metrics: MetricsConfig = msgspec.field(default_factory=MetricsConfig)
    notify: list[NotifySinkConfig] = msgspec.field(default_factory=list)

    def __post_init__(self) -> None:
        _check_notify(self.notify)


# The sections a reload (SIGHUP) puts in force; the others need a restart, but for the keys
# of RELOADABLE_KEYS, which a reload puts in force too.
RELOADABLE: Final = ("alerts", "auth", "limits", "log", "notify")
RELOADABLE_KEYS: Final = (("server", "cors_origins"),)


def reloaded(running: Config, new: Config) -> tuple[Config, list[str]]:
    """What reloading ``new`` puts in force: ``running`` with the sections and keys of ``new``
    that a reload applies (``RELOADABLE``, ``RELOADABLE_KEYS``), and the names of the other
    sections that differ in ``new``, which keep their running values until a restart."""
    config = msgspec.structs.replace(running, **{name: getattr(new, name) for name in RELOADABLE})
    for section, key in RELOADABLE_KEYS:
        table = msgspec.structs.replace(
            getattr(config, section), **{key: getattr(getattr(new, section), key)}
        )
        config = msgspec.structs.replace(config, **{section: table})
    restart = [
        name
        for name in config.__struct_fields__
        if name not in RELOADABLE and getattr(new, name) != getattr(config, name)
    ]
    return config, restart


_PATH = re.compile(r" - at `\$((?:\.[A-Za-z0-9_]+|\[\d+\])*)`$")
_UNKNOWN = re.compile(r"^Object contains unknown field `([^`]*)`")


def _lookup(doc: Any, dotted: list[str | int]) -> Any:
    for part in dotted:
        doc = doc[part]
    return doc


def _explain(exc: msgspec.ValidationError, doc: dict[str, Any], source: str) -> ConfigError:
    """The operator's message for a validation error: the key, what was wrong and what was
    expected; the bad value only where it can hold no secret (``SECRET_KEYS``), and never a
    whole table."""
    message = str(exc)
    match = _PATH.search(message)
    raw_path = match.group(1) if match else ""
    expected = message[: match.start()] if match else message
    parts: list[str | int] = [
        int(p[1:-1]) if p.startswith("[") else p[1:]
        for p in re.findall(r"\.[A-Za-z0-9_]+|\[\d+\]", raw_path)
    ]
    key = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts)[1:]
    unknown = _UNKNOWN.match(expected)
    if unknown:
        name = f"{key}.{unknown.group(1)}" if key else unknown.group(1)
        section = _lookup(_DEFAULT_DOC, parts) if parts else _DEFAULT_DOC
        known = ", ".join(sorted(section)) if isinstance(section, dict) else ""
        return ConfigError(f"{source}: unknown key {name!r}; expected one of: {known}")
    try:
        value = _lookup(doc, parts)
    except (KeyError, IndexError, TypeError):
        return ConfigError(f"{source}: {key or 'document'}: {expected}")
    if isinstance(value, dict):
        # A table's own check (``__post_init__``) failed, or a table stands where a value
        # should: the message names the key, and the table may hold secrets.
        said = expected if expected.startswith(f"{key}.") else f"{key}: {_plain(expected)}"
        return ConfigError(f"{source}: {said}")
    if _holds_secret(parts):
        return ConfigError(f"{source}: {key}: {_secret_problem(value, expected)}")
    if expected.startswith("Invalid enum value"):
        return ConfigError(f"{source}: {key} = {value!r}: expected one of: {_choices(parts)}")
    return ConfigError(f"{source}: {key} = {value!r}: {_plain(expected)}")


def _holds_secret(parts: list[str | int]) -> bool:
    """Whether the value at ``parts`` is, or contains, a secret-bearing key."""
    if parts and parts[0] == "notify":
        return len(parts) < 3 or parts[2] in NOTIFY_SECRET_KEYS
    return any(
        tuple(parts[: len(secret)]) == secret or tuple(secret[: len(parts)]) == tuple(parts)
        for secret in SECRET_KEYS
    )


_LENGTH = re.compile(r"^Expected `str` of length [<>]= \d+$")


def _secret_problem(value: Any, expected: str) -> str:
    """What is wrong with a secret-bearing value, without the value: its length against the
    rule, or the type expected and the type found."""
    if isinstance(value, str) and _LENGTH.match(expected):
        problem = secret_length_problem(len(value))
        if problem is not None:
            return problem
    if expected.startswith("Expected") and ", got " in expected:
        return _plain(expected)
    return f"{_plain(expected)} (value not shown: it holds a secret)"


def _choices(parts: list[str | int]) -> str:
    """The allowed values of a Literal-typed key, read from the Structs themselves."""
    info: Any = msgspec.inspect.type_info(Config)
    for part in parts:
        if isinstance(part, int):  # an item of a list, e.g. alerts.rules[0]
            info = info.item_type
        else:
            info = next(f.type for f in info.fields if f.name == part)
    return ", ".join(repr(v) for v in getattr(info, "values", ()))


def _plain(expected: str) -> str:
    """'Expected `int` >= 1' → 'expected int >= 1'."""
    return expected.replace("`", "").replace("Expected", "expected", 1)


def from_dict(doc: dict[str, Any], source: str = "config") -> Config:
    """Convert a parsed TOML document; raise ConfigError naming key, value and expectation."""
    try:
        config = msgspec.convert(doc, Config, strict=True)
    except msgspec.ValidationError as exc:
        raise _explain(exc, doc, source) from None
    return config


def load(path: Path | None) -> Config:
    """Read ``path`` (None: embedded defaults), with its relative paths made absolute: relative
    to the file's directory (with no file, to the working directory), so that every command
    finds the same state wherever it runs."""
    if path is None:
        return _anchored(Config(), Path.cwd())
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text: {exc.reason}") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return _anchored(from_dict(doc, str(path)), path.absolute().parent)


def _anchored(config: Config, base: Path) -> Config:
    """``config`` with ``storage.state_dir`` and ``storage.sqlite_path`` made absolute against
    ``base`` (an absolute path stays as it is)."""
    storage = config.storage
    anchored = msgspec.structs.replace(
        storage,
        state_dir=str(base / storage.state_dir),
        sqlite_path=str(base / storage.sqlite_path) if storage.sqlite_path else "",
    )
    return msgspec.structs.replace(config, storage=anchored)


def defaults_as_dict() -> dict[str, Any]:
    """Every key with its default, nested as in the file."""
    result: dict[str, Any] = msgspec.to_builtins(Config())
    return result


_DEFAULT_DOC = defaults_as_dict()
