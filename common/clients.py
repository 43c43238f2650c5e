"""Client factory: one aiobotocore session and config per named endpoint.

Per-endpoint checksum behaviour matters: boto3 >= 1.36 sends checksums by default and several
S3-compatible stores reject them (``checksums = "when_required"``).

Every client made here also loses three pieces of fixed per-call work that change nothing on
the wire (see :func:`speed_up`): endpoint rules evaluated again for every new object key, a
User-Agent string rebuilt twice per request, and dateutil's general parser for every
ISO-8601 timestamp of an answer (a ListObjectsV2 page has a thousand).
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Callable
from contextlib import AsyncExitStack
from datetime import datetime
from itertools import chain
from typing import Any

import botocore.session
from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession
from botocore.config import Config
from botocore.context import get_context
from botocore.endpoint_provider import BaseRule
from botocore.exceptions import ProfileNotFound
from botocore.utils import parse_timestamp

from common.errors import ConfigError, GiveUp
from common.settings import (
    DefaultCredentials,
    Endpoint,
    EnvCredentials,
    ProfileCredentials,
    StaticCredentials,
)


def _credential_kwargs(ep: Endpoint) -> dict[str, Any]:
    creds = ep.credentials
    if isinstance(creds, StaticCredentials):
        out = {"aws_access_key_id": creds.access_key_id,
               "aws_secret_access_key": creds.secret_access_key.get_secret_value()}
        if creds.session_token is not None:
            out["aws_session_token"] = creds.session_token.get_secret_value()
        return out
    if isinstance(creds, EnvCredentials):
        key = os.environ.get(f"{creds.prefix}AWS_ACCESS_KEY_ID")
        secret = os.environ.get(f"{creds.prefix}AWS_SECRET_ACCESS_KEY")
        if not key or not secret:
            raise ConfigError(f"endpoint {ep.name!r}: {creds.prefix}AWS_ACCESS_KEY_ID / "
                              f"{creds.prefix}AWS_SECRET_ACCESS_KEY are not set")
        out = {"aws_access_key_id": key, "aws_secret_access_key": secret}
        token = os.environ.get(f"{creds.prefix}AWS_SESSION_TOKEN")
        if token:
            out["aws_session_token"] = token
        return out
    if isinstance(creds, ProfileCredentials):
        return {"profile_name": creds.profile}
    assert isinstance(creds, DefaultCredentials)
    return {}


CONNECT_TIMEOUT_SECONDS = 10.0
READ_TIMEOUT_SECONDS = 60.0


# botocore sends nothing twice for S3: s3ferry retries S3 calls itself, classified, and a
# CreateMultipartUpload sent again after a lost answer opens a second upload nobody sees.
# ("max_attempts": 1 would mean one retry; "total_max_attempts" counts the first attempt.)
# SQS calls keep botocore's standard retries: each is idempotent, or harmless twice.
_RETRIES: dict[str, Any] = {"s3": {"total_max_attempts": 1, "mode": "standard"},
                            "sqs": {"total_max_attempts": 3, "mode": "standard"}}


def botocore_config(ep: Endpoint, *, service: str = "s3", pool: int | None = None,
                    read_timeout: float = READ_TIMEOUT_SECONDS,
                    config_cls: type[Config] = Config) -> Config:
    s3: Any = {"addressing_style": ep.addressing_style}  # botocore's _S3Dict
    if ep.sign_payload is not None:
        s3["payload_signing_enabled"] = ep.sign_payload
    return config_cls(
        region_name=ep.region,
        s3=s3,
        request_checksum_calculation=ep.checksums,
        response_checksum_validation=ep.checksums,
        max_pool_connections=pool or ep.max_pool_connections,
        retries=_RETRIES.get(service, _RETRIES["s3"]),
        connect_timeout=CONNECT_TIMEOUT_SECONDS,
        read_timeout=read_timeout,
        tcp_keepalive=True,
    )


# Explicit keys must win over AWS_PROFILE in the environment: botocore still reads the
# profile variable when keys are passed, and fails if that profile does not exist here.
_NO_PROFILE = {"profile": (None, None, None, None)}


def _explicit_keys(ep: Endpoint) -> bool:
    return isinstance(ep.credentials, StaticCredentials | EnvCredentials)


def plain_http(endpoint_url: str | None) -> dict[str, Any]:
    """``verify=False`` for an ``http://`` endpoint (nothing to verify), else nothing."""
    return {"verify": False} if (endpoint_url or "").lower().startswith("http://") else {}


class EndpointSession:
    """One endpoint's aiobotocore session: its region, its credentials, its clients.

    aiobotocore directly, not aioboto3: aioboto3 imports all of boto3 for its resources,
    which s3ferry never uses (a sixth of a second at every start).
    """

    def __init__(self, ep: Endpoint) -> None:
        creds = _credential_kwargs(ep)
        session = AioSession(session_vars=_NO_PROFILE) if _explicit_keys(ep) else AioSession()
        if "profile_name" in creds:
            session.set_config_variable("profile", creds["profile_name"])
        if "aws_access_key_id" in creds:
            session.set_credentials(creds["aws_access_key_id"], creds["aws_secret_access_key"],
                                    creds.get("aws_session_token"))
        session.set_config_variable("region", ep.region)
        self._session: Any = session  # typed stubs overload create_client per service

    def client(self, service: str, *, endpoint_url: str | None, config: Config) -> Any:
        """An async context manager that opens the client.

        A plain-http endpoint gets ``verify=False``: there is no TLS to verify, and
        aiobotocore would otherwise load the CA bundle (17 ms) on the first request.
        """
        return self._session.create_client(service, endpoint_url=endpoint_url, config=config,
                                           **plain_http(endpoint_url))

    async def get_credentials(self) -> Any:
        return await self._session.get_credentials()


def async_session(ep: Endpoint) -> EndpointSession:
    return EndpointSession(ep)


def sync_client(ep: Endpoint, service: str = "s3") -> Any:
    """A plain boto3 client for scripts, the demo and tests."""
    import boto3.session  # not at import time: the services never need boto3

    kwargs: dict[str, Any] = _credential_kwargs(ep)
    if _explicit_keys(ep):
        kwargs["botocore_session"] = botocore.session.Session(session_vars=_NO_PROFILE)
    session: Any = boto3.session.Session(region_name=ep.region, **kwargs)
    return speed_up(session.client(service, endpoint_url=ep.endpoint_url,
                                   config=botocore_config(ep, service=service)))


def speed_up(client: Any) -> Any:
    """Cut fixed per-call CPU of a botocore or aiobotocore client; requests stay identical.

    Both changes reach into private botocore attributes: when those are missing (another
    botocore), the client is returned unchanged, only slower.
    """
    filter_unread_endpoint_params(client)
    memoise_user_agent(client)
    fast_timestamps(client)
    return client


# -- timestamps: the standard library for ISO 8601, botocore for anything else ---------------

_ISO_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?Z")


def parse_answer_timestamp(value: Any) -> datetime:
    """What botocore's parser makes of a timestamp, 30x faster for S3's ISO-8601 UTC form.

    ``LastModified`` in every ListObjectsV2 entry went through dateutil's general parser
    (about 0.13 ms each: a third of a backfill's CPU). The same instant comes back, in UTC.
    """
    if isinstance(value, str) and _ISO_UTC.fullmatch(value):
        return datetime.fromisoformat(value)
    stamp: datetime = parse_timestamp(value)
    return stamp


def fast_timestamps(client: Any) -> None:
    """Make the client's answer parsers read timestamps with :func:`parse_answer_timestamp`."""
    factory: Any = getattr(getattr(client, "_endpoint", None), "_response_parser_factory", None)
    if hasattr(factory, "set_parser_defaults"):
        factory.set_parser_defaults(timestamp_parser=parse_answer_timestamp)


# -- endpoint rules: one evaluation per bucket, not per key -------------------------------------

# A name a rule reads: {"ref": "Bucket"}, or "{Bucket}" / "{bucketArn#region}" in a template.
# Anything after a "{" counts: reading too many names only keeps a parameter.
_TEMPLATE_NAME = re.compile(r"\{([A-Za-z0-9_]+)")
_SCALARS = (bool, int, float, type(None))


def ruleset_references(rules: object) -> frozenset[str] | None:
    """Every name the parsed endpoint rules can read, or None if they hold an unknown shape.

    The rule objects keep the ruleset's JSON (conditions, endpoint, error) as plain dicts,
    lists and strings; None means "something else": then nothing is known to be unread.
    """
    names: set[str] = set()
    stack = [rules]
    while stack:
        node = stack.pop()
        if isinstance(node, str):
            names.update(_TEMPLATE_NAME.findall(node))
        elif isinstance(node, dict):
            if isinstance(node.get("ref"), str):
                names.add(node["ref"])
            stack.extend(node.values())
        elif isinstance(node, list | tuple):
            stack.extend(node)
        elif isinstance(node, BaseRule):
            stack.extend(vars(node).values())
        elif not isinstance(node, _SCALARS):
            return None
    return frozenset(names)


class UnreadParamsFilter:
    """An endpoint provider that drops the parameters its ruleset never reads.

    botocore caches ``resolve_endpoint`` on all its parameters, and S3 passes ``Key`` (and
    ``Prefix``, ``CopySource``) although no rule reads them: every new key missed the cache
    and evaluated the whole S3 ruleset again. Without them a bucket resolves once.
    """

    def __init__(self, provider: Any, unread: frozenset[str]) -> None:
        self.provider = provider
        self.unread = unread

    def resolve_endpoint(self, **params: Any) -> Any:
        for name in self.unread:
            params.pop(name, None)
        return self.provider.resolve_endpoint(**params)

    def __getattr__(self, name: str) -> Any:
        if name == "provider":  # not set yet (copy, pickle): no recursion
            raise AttributeError(name)
        return getattr(self.provider, name)


def filter_unread_endpoint_params(client: Any) -> None:
    """Put an :class:`UnreadParamsFilter` in front of the client's endpoint provider.

    Only optional parameters that no rule reads are dropped: a required one would fail
    resolution when missing, and a read one may change the endpoint.
    """
    resolver: Any = getattr(client, "_ruleset_resolver", None)
    provider: Any = getattr(resolver, "_provider", None)
    ruleset: Any = getattr(provider, "ruleset", None)
    if (isinstance(provider, UnreadParamsFilter) or not hasattr(provider, "resolve_endpoint")
            or not isinstance(getattr(ruleset, "parameters", None), dict)):
        return
    read = ruleset_references(getattr(ruleset, "rules", None))
    if read is None:
        return
    unread = frozenset(name for name, spec in ruleset.parameters.items()
                       if name not in read and not getattr(spec, "required", True))
    if unread:
        resolver._provider = UnreadParamsFilter(provider, unread)


# -- User-Agent: built once per set of feature ids ---------------------------------------------

_USER_AGENT_MEMO_SIZE = 64


class _UserAgentMemo:
    """``UserAgentString.to_string`` remembered per set of feature ids.

    The string is the client's fixed facts (SDK, OS, Python, config) plus the feature ids of
    the client and of the current request context; botocore rebuilds and sanitises it twice
    per request.
    """

    def __init__(self, creator: Any, build: Callable[[], str]) -> None:
        self._creator = creator
        self._build = build
        self._memo: dict[frozenset[str], str] = {}

    def __call__(self) -> str:
        ctx = get_context()
        key = frozenset(chain(self._creator._client_features or (),
                              ctx.features if ctx is not None else ()))
        value = self._memo.get(key)
        if value is None:
            if len(self._memo) >= _USER_AGENT_MEMO_SIZE:
                self._memo.clear()
            value = self._memo[key] = self._build()
        return value


def memoise_user_agent(client: Any) -> None:
    """Shadow the client's own ``_user_agent_creator.to_string`` with a :class:`_UserAgentMemo`.

    An instance attribute, so both callers (request serialisation and the ``request-created``
    handler botocore registered as a bound method) use it.
    """
    creator: Any = getattr(client, "_user_agent_creator", None)
    build = getattr(creator, "to_string", None)
    if (build is None or not hasattr(creator, "_client_features")
            or isinstance(build, _UserAgentMemo)):
        return
    creator.to_string = _UserAgentMemo(creator, build)


class ClientPool:
    """Opens each endpoint's S3 client once and closes them all together.

    Clients are shared by every job of a process: their connection pools are sized to the part
    concurrency, so a worker holds ``max_parts`` connections per endpoint, not per job.
    """

    def __init__(self, endpoints: dict[str, Endpoint], *, pool: int | None = None) -> None:
        self._endpoints = endpoints
        self._pool = pool
        self._stack = AsyncExitStack()
        self._clients: dict[tuple[str, str], Any] = {}
        self._sessions: dict[str, Any] = {}
        self._lock = asyncio.Lock()

    async def __aenter__(self) -> ClientPool:
        await self._stack.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._clients.clear()
        self._sessions.clear()
        await self._stack.__aexit__(None, None, None)

    def endpoint(self, name: str) -> Endpoint:
        try:
            return self._endpoints[name]
        except KeyError:
            raise GiveUp(f"unknown endpoint {name!r}", reason="unknown_endpoint") from None

    async def get(self, name: str, service: str = "s3") -> Any:
        key = (name, service)
        client = self._clients.get(key)
        if client is not None:
            return client
        async with self._lock:
            client = self._clients.get(key)
            if client is not None:
                return client
            ep = self.endpoint(name)
            try:
                session = self._session(name)
                client = await self._stack.enter_async_context(session.client(
                    service, endpoint_url=ep.endpoint_url,
                    config=botocore_config(ep, service=service, pool=self._pool,
                                           config_cls=AioConfig)))
            except ProfileNotFound as exc:
                raise ConfigError(f"endpoint {name!r}: {exc}") from exc
            self._clients[key] = speed_up(client)
        return client

    def _session(self, name: str) -> Any:
        session = self._sessions.get(name)
        if session is None:
            session = self._sessions[name] = async_session(self.endpoint(name))
        return session

    async def credentials(self, name: str) -> Any:
        """The endpoint's botocore credentials object (refreshing ones refresh), or None.

        Callers take ``await creds.get_frozen_credentials()`` per request and never log it.
        """
        try:
            return await self._session(name).get_credentials()
        except ProfileNotFound as exc:
            raise ConfigError(f"endpoint {name!r}: {exc}") from exc
