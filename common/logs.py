"""structlog set-up: JSON in production, console for people; secrets scrubbed on the way out.

Events are snake_case verbs (``copy_started``); context is bound per job. A last processor
removes anything that looks like a credential or a presigned query string, so a careless
``log.info(..., url=...)`` cannot leak one.
"""

from __future__ import annotations

import functools
import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

_SECRET_FIELDS = re.compile(
    r"(secret|password|token|authorization|signature|credential|access_key)", re.I)
_PRESIGNED = re.compile(
    r"(X-Amz-(?:Signature|Credential|Security-Token)|Signature|AWSAccessKeyId|"
    r"x-oss-signature|q-signature|OSSAccessKeyId)=[^&\s\"']+", re.I)
_AUTH_HEADER = re.compile(r"(Authorization['\"]?\s*[:=]\s*['\"]?)[^'\",}]+", re.I)
# A session token as a header some store quoted back ("x-amz-security-token: ..."); as a
# query parameter it is one of the presigned ones above.
_TOKEN_HEADER = re.compile(r"(X-Amz-Security-Token['\"]?\s*:\s*['\"]?)[^'\",;\s}]+", re.I)


def scrub_text(text: str) -> str:
    """Redact signatures, credentials, session tokens and Authorization values inside free
    text."""
    if "=" not in text and ":" not in text:  # both patterns need one: most values are ids
        return text
    text = _PRESIGNED.sub(lambda m: f"{m.group(1)}=REDACTED", text)
    text = _TOKEN_HEADER.sub(lambda m: f"{m.group(1)}REDACTED", text)
    return _AUTH_HEADER.sub(lambda m: f"{m.group(1)}REDACTED", text)


@functools.lru_cache(maxsize=1024)
def _secret_field(key: str) -> bool:
    """A field whose name says it holds a secret (field names are few: cached)."""
    return key != "event" and _SECRET_FIELDS.search(key) is not None


def _scrub(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key, value in event.items():  # values replaced in place: the keys stay as they are
        if _secret_field(key):
            event[key] = "REDACTED"
        elif isinstance(value, str):
            event[key] = scrub_text(value)
    return event


def configure_logging(*, fmt: str = "json", level: str = "info") -> None:
    """Configure structlog once per process."""
    lvl = logging.getLevelName(level.upper())
    if not isinstance(lvl, int):
        lvl = logging.INFO
    logging.basicConfig(level=lvl, stream=sys.stderr, format="%(message)s")
    for noisy in ("botocore", "aiobotocore", "aioboto3", "urllib3"):
        logging.getLogger(noisy).setLevel(max(lvl, logging.WARNING))
    renderer: Any = (structlog.processors.JSONRenderer() if fmt == "json"
                     else structlog.dev.ConsoleRenderer(colors=False))
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.format_exc_info,
            _scrub,  # before the level and time are added: they never hold a secret
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
