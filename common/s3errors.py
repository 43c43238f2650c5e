"""The one place where botocore and network errors become s3ferry errors.

Call sites wrap their calls in :func:`translated`; :func:`classify` is the rule behind it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from common import errors

_TRANSIENT_CODES = frozenset({
    "SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout", "RequestTimeTooSkewed",
    "Throttling", "ThrottlingException", "RequestThrottled", "OperationAborted",
    "500", "502", "503", "504", "BadDigest", "XAmzContentSHA256Mismatch", "IncompleteBody",
})
_EXPIRED_CODES = frozenset({
    "ExpiredToken", "ExpiredTokenException", "TokenRefreshRequired", "InvalidAccessKeyId",
    "SignatureDoesNotMatch", "InvalidToken", "UnrecognizedClientException",
    "InvalidClientTokenId", "AuthFailure",
})
_DENIED_CODES = frozenset({"AccessDenied", "AllAccessDisabled", "403", "Forbidden",
                           "AccountProblem"})
_CHANGED_CODES = frozenset({"PreconditionFailed", "412"})
_VANISHED_CODES = frozenset({"NoSuchKey", "NoSuchVersion", "404", "NotFound"})


NOT_FOUND_CODES = frozenset({"404", "NoSuchKey", "NotFound"})


async def head_or_none(client: Any, *, bucket: str, key: str) -> dict[str, Any] | None:
    """HEAD an object with its checksum; None when it does not exist.

    Any other error propagates as botocore raised it, for the caller to classify.
    """
    try:
        answer: dict[str, Any] = await client.head_object(Bucket=bucket, Key=key,
                                                          ChecksumMode="ENABLED")
    except Exception as exc:
        if error_code(exc) in NOT_FOUND_CODES:
            return None
        raise
    return answer


def error_code(exc: BaseException) -> str:
    """The S3 error code of a botocore ClientError, or the exception's class name."""
    response: Any = getattr(exc, "response", None)
    if isinstance(response, dict):
        code = response.get("Error", {}).get("Code")
        if code:
            return str(code)
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if status:
            return str(status)
    return type(exc).__name__


def _is_network_error(exc: BaseException) -> bool:
    names = {cls.__name__ for cls in type(exc).__mro__}
    network = {"EndpointConnectionError", "ConnectionClosedError", "ReadTimeoutError",
               "ConnectTimeoutError", "ResponseStreamingError", "IncompleteReadError",
               "ClientPayloadError", "ServerDisconnectedError", "ClientConnectorError",
               "ClientOSError", "HTTPClientError", "ConnectionError", "ProxyConnectionError"}
    return bool(names & network) or isinstance(
        exc, ConnectionError | asyncio.TimeoutError | TimeoutError)


@contextmanager
def translated(operation: str, context: str = "") -> Iterator[None]:
    """Whatever the calls in the block raise leaves as the s3ferry error it means
    (:func:`classify`); s3ferry's own errors pass as they are."""
    try:
        yield
    except errors.FerryError:
        raise
    except Exception as exc:
        raise classify(exc, operation=operation, context=context) from exc


def classify(exc: BaseException, *, operation: str,
             context: str = "") -> errors.FerryError:
    """Translate a low-level error into the tree in :mod:`common.errors`.

    ``operation`` is the S3 call (``GetObject``); ``context`` says what it was for, e.g. the
    side (``source``/``destination``), and ends up in the reason text.
    """
    if isinstance(exc, errors.FerryError):
        return exc
    code = error_code(exc)
    where = f"{operation}{' on ' + context if context else ''}"
    text = f"{where}: {code}: {exc}"
    return _by_code(exc, code, text, context) or _by_kind(exc, code, text)


def _by_code(exc: BaseException, code: str, text: str,
             context: str) -> errors.FerryError | None:
    """Errors S3 names: what each code means for the job."""
    if code in _EXPIRED_CODES or type(exc).__name__ in {"NoCredentialsError",
                                                        "PartialCredentialsError"}:
        return errors.ExpiredCredentials(text, reason=f"credentials:{code}")
    if code in _VANISHED_CODES and context == "source":
        return errors.SourceVanished(text)
    simple: dict[str, type[errors.FerryError]] = {
        "InvalidObjectState": errors.SourceArchived, "NoSuchBucket": errors.NoSuchBucket,
        "NoSuchUpload": errors.UploadGone}
    simple.update(dict.fromkeys(_CHANGED_CODES, errors.SourceChanged))
    simple.update(dict.fromkeys(_DENIED_CODES, errors.AccessDenied))
    kind = simple.get(code)
    return kind(text) if kind is not None else None


def _by_kind(exc: BaseException, code: str, text: str) -> errors.FerryError:
    """Everything else: transient, a server error, a bug of ours, or permanent."""
    if code in _TRANSIENT_CODES or _is_network_error(exc):
        return errors.RetryNow(text, reason=_retry_reason(code))
    if code.isdigit() and code.startswith("5"):
        return errors.RetryNow(text, reason="http_5xx")
    if not isinstance(getattr(exc, "response", None), dict):  # not an answer from S3
        return errors.GiveUp(text, reason=f"internal:{code}")
    return errors.GiveUp(text, reason=f"s3:{code}")


def _retry_reason(code: str) -> str:
    if code in {"SlowDown", "Throttling", "ThrottlingException", "RequestThrottled", "503"}:
        return "throttled"
    if code in {"InternalError", "500", "502", "504", "ServiceUnavailable"}:
        return "server_error"
    if code in {"BadDigest", "XAmzContentSHA256Mismatch", "IncompleteBody"}:
        return "corrupt_transfer"
    return "network"
