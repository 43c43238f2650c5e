"""Client factory: one aioboto3 session and config per named endpoint.

Per-endpoint checksum behaviour matters: boto3 >= 1.36 sends checksums by default and several
S3-compatible stores reject them (``checksums = "when_required"``).
"""

from __future__ import annotations

import asyncio
import os
from contextlib import AsyncExitStack
from typing import Any

import aioboto3
import boto3
import botocore.session
from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession
from botocore.config import Config
from botocore.exceptions import ProfileNotFound

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


def botocore_config(ep: Endpoint, *, pool: int | None = None, read_timeout: float = 60.0,
                    config_cls: type[Config] = Config) -> Config:
    return config_cls(
        region_name=ep.region,
        s3={"addressing_style": ep.addressing_style},
        request_checksum_calculation=ep.checksums,
        response_checksum_validation=ep.checksums,
        max_pool_connections=pool or ep.max_pool_connections,
        retries={"max_attempts": 1, "mode": "standard"},  # we retry, classified, ourselves
        connect_timeout=10,
        read_timeout=read_timeout,
        tcp_keepalive=True,
    )


# Explicit keys must win over AWS_PROFILE in the environment: botocore still reads the
# profile variable when keys are passed, and fails if that profile does not exist here.
_NO_PROFILE = {"profile": (None, None, None, None)}


def _explicit_keys(ep: Endpoint) -> bool:
    return isinstance(ep.credentials, StaticCredentials | EnvCredentials)


def async_session(ep: Endpoint) -> aioboto3.Session:
    kwargs: dict[str, Any] = _credential_kwargs(ep)
    if _explicit_keys(ep):
        kwargs["botocore_session"] = AioSession(session_vars=_NO_PROFILE)
    return aioboto3.Session(region_name=ep.region, **kwargs)


def sync_client(ep: Endpoint, service: str = "s3") -> Any:
    """A plain boto3 client for scripts, the demo and tests."""
    kwargs: dict[str, Any] = _credential_kwargs(ep)
    if _explicit_keys(ep):
        kwargs["botocore_session"] = botocore.session.Session(session_vars=_NO_PROFILE)
    session: Any = boto3.session.Session(region_name=ep.region, **kwargs)
    return session.client(service, endpoint_url=ep.endpoint_url, config=botocore_config(ep))


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
        self._lock = asyncio.Lock()

    async def __aenter__(self) -> ClientPool:
        await self._stack.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._clients.clear()
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
                session: Any = async_session(ep)
                client = await self._stack.enter_async_context(session.client(
                    service, endpoint_url=ep.endpoint_url,
                    config=botocore_config(ep, pool=self._pool, config_cls=AioConfig)))
            except ProfileNotFound as exc:
                raise ConfigError(f"endpoint {name!r}: {exc}") from exc
            self._clients[key] = client
        return client
