"""Settings: read once at the entry point, passed down as frozen values.

Two sources, merged: the environment (prefix ``S3FERRY_``) for process settings, and an
optional TOML file (``S3FERRY_CONFIG``) that names endpoints::

    [endpoints.global]
    endpoint_url = "http://127.0.0.1:4566"      # omit for real AWS
    region = "us-east-1"
    addressing_style = "path"                   # auto | path | virtual
    checksums = "when_supported"                # when_supported | when_required
    server_side_copy = true                     # false for stores whose UploadPartCopy is broken
    tagging = true                              # false for stores without working object tags
    resume_uploads = true                       # false: never continue a killed worker's upload
    credentials = { kind = "static", access_key_id = "...", secret_access_key = "..." }
    # or { kind = "profile", profile = "china" } / { kind = "env" } / { kind = "default" }

    [endpoints.global.storage_class_map]        # optional, per destination
    GLACIER = "STANDARD"

Process settings may also appear in the TOML under ``[worker]`` and ``[dispatcher]`` (and
``[s3ferry]`` for the top-level ones); the environment wins, key by key. A table or key the
file misspells is refused with its name, never ignored. A file that holds keys (static
credentials, the intake token) must be readable by its owner only, unless
``S3FERRY_ALLOW_READABLE_SECRETS=1`` says otherwise.
"""

from __future__ import annotations

import difflib
import stat
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from common.errors import ConfigError
from common.limits import MAX_COPY_OBJECT, MAX_PART_SIZE, MAX_SINGLE_PUT, MIB, MIN_PART_SIZE
from common.routes import Route, routes_from_toml

_FROZEN = ConfigDict(frozen=True, extra="forbid")


class StaticCredentials(BaseModel):
    """Keys written in the file: for local emulators and tests, not for production."""

    model_config = _FROZEN
    kind: Literal["static"]
    access_key_id: str
    secret_access_key: SecretStr
    session_token: SecretStr | None = None


class ProfileCredentials(BaseModel):
    """A named profile from ~/.aws/config (the usual way to reach AWS China)."""

    model_config = _FROZEN
    kind: Literal["profile"]
    profile: str


class EnvCredentials(BaseModel):
    """Keys from prefixed environment variables, e.g. ``CHINA_AWS_ACCESS_KEY_ID``."""

    model_config = _FROZEN
    kind: Literal["env"]
    prefix: str = ""


class DefaultCredentials(BaseModel):
    """botocore's default chain (instance role, IRSA, ECS task role, ...)."""

    model_config = _FROZEN
    kind: Literal["default"] = "default"


Credentials = Annotated[
    StaticCredentials | ProfileCredentials | EnvCredentials | DefaultCredentials,
    Field(discriminator="kind"),
]


class Endpoint(BaseModel):
    """One named S3 (and optionally SQS) endpoint with its own credentials."""

    model_config = _FROZEN
    name: str = ""
    endpoint_url: str | None = None
    region: str = "us-east-1"
    addressing_style: Literal["auto", "path", "virtual"] = "auto"
    checksums: Literal["when_supported", "when_required"] = "when_supported"
    server_side_copy: bool = True
    tagging: bool = True  # false for stores whose object tagging is missing or broken
    # SigV4 payload signing (SHA-256 of every uploaded byte). Unset: botocore's default, which
    # signs over http:// and not over https:// when a checksum header is sent (we always send
    # one). false: never, e.g. a plain-http store in a trusted network; the upload checksums
    # still protect the bytes. true: always.
    sign_payload: bool | None = None
    # The worker sends GET, HEAD, PUT, UploadPart and CopyObject as signed HTTP requests of
    # its own, without botocore's per-call machinery (same requests, ~1/3 of the CPU).
    # false sends every call through botocore.
    direct_requests: bool = True
    # Continue the multipart uploads that killed or stopped workers left (worker.multipart).
    # Taking one over uploads a claim part that Complete then leaves out: false for stores
    # that complete only from every part uploaded (rclone serve s3 answers InvalidPart).
    resume_uploads: bool = True
    credentials: Credentials = DefaultCredentials()
    storage_class_map: dict[str, str] = Field(default_factory=dict)
    kms_key_id: str | None = None
    max_pool_connections: int = Field(default=64, ge=1, le=1024)

    def same_store(self, other: Endpoint) -> bool:
        """One service, so an ETag means the same content on both (keys may differ)."""
        return (self.endpoint_url, self.region) == (other.endpoint_url, other.region)

    def identity(self) -> tuple[object, ...]:
        """What must be equal for a server-side copy to be possible: same service, same keys."""
        creds = self.credentials
        secret = creds.secret_access_key.get_secret_value() if isinstance(
            creds, StaticCredentials) else None
        return (self.endpoint_url, self.region, creds.kind,
                getattr(creds, "access_key_id", None), secret, getattr(creds, "profile", None),
                getattr(creds, "prefix", None))


class WorkerSettings(BaseModel):
    """How one worker process behaves; tuned per deployment."""

    model_config = _FROZEN
    max_jobs: int = Field(default=8, ge=1, le=512)
    # ReceiveMessage calls kept going at once; 0 = one per 10 job slots, at most 4. One
    # receive at a time caps a worker at 10 messages per round trip to SQS.
    receivers: int = Field(default=0, ge=0, le=16)
    max_parts: int = Field(default=16, ge=1, le=512)
    # Bounded by S3's limits (common/limits): no setting can send more than 5 GiB in one PUT,
    # part or CopyObject, or a part under 5 MiB.
    part_size: int = Field(default=8 * MIB, ge=MIN_PART_SIZE, le=MAX_PART_SIZE)
    multipart_threshold: int = Field(default=16 * MIB, ge=MIN_PART_SIZE, le=MAX_SINGLE_PUT)
    server_copy_threshold: int = Field(default=1024 * MIB, ge=MIN_PART_SIZE,
                                       le=MAX_COPY_OBJECT)
    server_part_size: int = Field(default=256 * MIB, ge=MIN_PART_SIZE, le=MAX_PART_SIZE)
    # Bytes of server-side copies (CopyObject objects, UploadPartCopy parts) this worker has
    # the store copy at once; 0 = no bound. AWS copies on its own fleet, so leave it there;
    # a MinIO, Ceph or LocalStack node reads, hashes and writes every copied byte with its own
    # CPU and disks, and more copies at once than it has cores make each one slower
    # (bench/README, "W4a, server-side copy budget"). An object larger than the budget is copied
    # alone. Counted in MiB: at least 1 MiB when set.
    server_copy_budget: int = Field(default=0, ge=0)
    visibility_timeout: int = Field(default=60, ge=10, le=43_200)
    wait_time_seconds: int = Field(default=20, ge=0, le=20)
    max_attempts: int = Field(default=5, ge=1, le=100)
    drain_seconds: float = Field(default=25.0, ge=0)
    exit_when_idle: bool = False
    idle_polls: int = Field(default=2, ge=1)
    retry_attempts: int = Field(default=5, ge=1)
    retry_max_seconds: float = Field(default=30.0, gt=0)
    request_timeout: float = Field(default=300.0, gt=0)

    @property
    def upload_quiet_seconds(self) -> float:
        """Half a lease: a job whose lease went unrenewed this long is given up
        (worker.consumer), so an upload idle this long has no live driver (worker.multipart).
        One value for both: the second rests on the first."""
        return self.visibility_timeout / 2

    @field_validator("server_copy_budget")
    @classmethod
    def _whole_mebibytes(cls, value: int) -> int:
        if 0 < value < MIB:
            raise ValueError(f"server_copy_budget is 0 (no bound) or at least {MIB} bytes "
                             "(1 MiB)")
        return value


class DispatcherSettings(BaseModel):
    """How ``s3ferry backfill``, ``events`` and ``serve`` put jobs on the queue."""

    model_config = _FROZEN
    # Small jobs share a message, up to this many (1: a message per job). Fewer SQS calls
    # and less per-message work in the workers; each job still has its own outcome.
    jobs_per_message: int = Field(default=100, ge=1, le=500)
    # Copies of objects up to this size may share a message; larger ones get their own, so
    # they spread over the fleet's workers.
    bundle_object_bytes: int = Field(default=1 * MIB, ge=0)
    # ``s3ferry serve``: where its intake API listens, and the bearer token every request
    # must carry (S3FERRY_DISPATCHER__INTAKE_TOKEN; the service will not start without one).
    # Plain HTTP: put TLS in front of it (ingress, load balancer) beyond one host.
    intake_host: str = "127.0.0.1"
    intake_port: int = Field(default=9410, ge=0, le=65_535)
    intake_token: SecretStr | None = None


class Settings(BaseSettings):
    """Everything a process needs, from ``S3FERRY_*`` and the optional TOML file."""

    model_config = SettingsConfigDict(env_prefix="S3FERRY_", env_nested_delimiter="__",
                                      extra="ignore", frozen=True)

    config: Path | None = None
    # A config file that holds keys is refused when other users may read it, unless this is
    # set (from the environment: a file cannot vouch for itself).
    allow_readable_secrets: bool = False
    queue_endpoint: str = "queue"
    queue_url: str = ""
    dlq_url: str = ""
    metrics_port: int = Field(default=9400, ge=0, le=65_535)
    metrics_host: str = "0.0.0.0"
    log_format: Literal["json", "console"] = "json"
    log_level: str = "info"
    worker: WorkerSettings = WorkerSettings()
    dispatcher: DispatcherSettings = DispatcherSettings()
    endpoints: dict[str, Endpoint] = Field(default_factory=dict)
    routes: dict[str, Route] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _name_endpoints(self) -> Settings:
        for name, ep in list(self.endpoints.items()):
            if ep.name != name:
                self.endpoints[name] = ep.model_copy(update={"name": name})
        return self

    @model_validator(mode="after")
    def _routes_use_known_endpoints(self) -> Settings:
        for name, route in list(self.routes.items()):
            if route.name != name:
                route = self.routes[name] = route.model_copy(update={"name": name})
            sides = [("source", route.source.endpoint)] + [
                (f"destinations.{i}", d.endpoint) for i, d in enumerate(route.destinations)]
            for where, endpoint in sides:
                if endpoint not in self.endpoints:
                    known = ", ".join(sorted(self.endpoints)) or "none"
                    raise ValueError(f"routes.{name}.{where}.endpoint: unknown endpoint "
                                     f"{endpoint!r} (configured: {known})")
        return self

    def route_endpoints(self) -> list[str]:
        """The endpoints the routes name, as sources or destinations (sorted)."""
        return sorted({ep for route in self.routes.values()
                       for ep in (route.source.endpoint,
                                  *(d.endpoint for d in route.destinations))})

    def endpoint(self, name: str) -> Endpoint:
        try:
            return self.endpoints[name]
        except KeyError:
            known = ", ".join(sorted(self.endpoints)) or "none"
            raise ConfigError(f"unknown endpoint {name!r} (configured: {known})") from None


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc


_SECTIONS = ("worker", "dispatcher")  # TOML tables merged key by key with the environment
_TABLES = ("endpoints", "routes", *_SECTIONS, "s3ferry")
# What [s3ferry] may set: the top-level settings that are not tables of their own.
_TOP_LEVEL = frozenset(Settings.model_fields) - {"config", "allow_readable_secrets", *_TABLES}


def _refuse_unknown_names(data: dict[str, Any], path: Path) -> None:
    """A misspelt table or key would be silently ignored: name it instead."""
    def unknown(where: str, names: set[str], known: frozenset[str] | tuple[str, ...]) -> None:
        for name in sorted(names - set(known)):
            near = difflib.get_close_matches(name, known, n=1)
            hint = f" (did you mean {where}{near[0]}?)" if near else ""
            raise ConfigError(f"{path}: unknown {'key' if where else 'table'} "
                              f"{where}{name}{hint}; known: {', '.join(sorted(known))}")

    unknown("", set(data), _TABLES)
    process = data.get("s3ferry", {})
    if isinstance(process, dict):
        unknown("s3ferry.", set(process), _TOP_LEVEL)


def _holds_secrets(data: dict[str, Any]) -> bool:
    endpoints = data.get("endpoints", {})
    static = any(isinstance(ep, dict) and isinstance(ep.get("credentials"), dict)
                 and ep["credentials"].get("kind") == "static"
                 for ep in (endpoints.values() if isinstance(endpoints, dict) else ()))
    dispatcher = data.get("dispatcher", {})
    return static or (isinstance(dispatcher, dict) and "intake_token" in dispatcher)


def _refuse_readable_secrets(path: Path, data: dict[str, Any], allowed: bool) -> None:
    mode = path.stat().st_mode
    if allowed or not _holds_secrets(data) or not mode & (stat.S_IRGRP | stat.S_IROTH):
        return
    raise ConfigError(f"{path} holds keys and other users can read it (mode "
                      f"{stat.filemode(mode)}): chmod 600 it, or set "
                      "S3FERRY_ALLOW_READABLE_SECRETS=1 to start anyway")


def load_settings(config: Path | str | None = None, **overrides: Any) -> Settings:
    """Read the environment and the TOML file once; fail with the bad field named."""
    try:
        settings = _merged(config, overrides)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from exc
    if (settings.queue_url or settings.dlq_url) and (
            settings.queue_endpoint not in settings.endpoints):
        known = ", ".join(sorted(settings.endpoints)) or "none"
        raise ConfigError(f"no endpoint named {settings.queue_endpoint!r} for the SQS queues "
                          f"(configured: {known}): add [endpoints.{settings.queue_endpoint}] "
                          "to the config file or set S3FERRY_QUEUE_ENDPOINT")
    return settings


def _merged(config: Path | str | None, overrides: dict[str, Any]) -> Settings:
    env_only = Settings(**overrides)
    path = Path(config) if config else env_only.config
    if path is None:
        return env_only
    data = _read_toml(path)
    _refuse_unknown_names(data, path)
    _refuse_readable_secrets(path, data, env_only.allow_readable_secrets)
    file_values: dict[str, Any] = {"endpoints": data.get("endpoints", {}),
                                   "routes": routes_from_toml(data.get("routes", {}))}
    for section in _SECTIONS:
        if section in data:
            file_values[section] = data[section]
    file_values.update(data.get("s3ferry", {}))
    env_set = {k: v for k, v in env_only.model_dump(exclude_unset=True).items()}
    merged = {**file_values, **env_set, **overrides, "config": path}
    for section in _SECTIONS:
        if section in file_values and section in env_set:
            merged[section] = {**file_values[section], **env_set[section]}
    return Settings(**merged)


def _describe(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"])
        lines.append(f"{where}: {err['msg']}" if where else err["msg"])
    return "invalid configuration: " + "; ".join(lines)
