"""Error classification: what the worker does with each failure."""

import asyncio

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError

from common import errors
from common.retry import RetryPolicy, retrying
from common.s3errors import classify, translated


def client_error(code: str, status: int = 400) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": "m"},
                        "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject")


@pytest.mark.parametrize(("code", "context", "kind", "reason"), [
    ("SlowDown", "source", errors.RetryNow, "throttled"),
    ("InternalError", "destination", errors.RetryNow, "server_error"),
    ("503", "source", errors.RetryNow, "throttled"),
    ("AccessDenied", "source", errors.AccessDenied, "access_denied"),
    ("NoSuchBucket", "destination", errors.NoSuchBucket, "no_such_bucket"),
    ("ExpiredToken", "source", errors.ExpiredCredentials, "credentials:ExpiredToken"),
    ("InvalidAccessKeyId", "destination", errors.ExpiredCredentials,
     "credentials:InvalidAccessKeyId"),
    ("SignatureDoesNotMatch", "source", errors.ExpiredCredentials,
     "credentials:SignatureDoesNotMatch"),
    ("NoSuchKey", "source", errors.SourceVanished, "source_vanished"),
    ("InvalidObjectState", "source", errors.SourceArchived, "source_archived"),
    ("PreconditionFailed", "source", errors.SourceChanged, "source_changed"),
    ("InvalidArgument", "destination", errors.GiveUp, "s3:InvalidArgument"),
])
def test_client_errors_land_in_the_right_branch(code: str, context: str,
                                                kind: type, reason: str) -> None:
    err = classify(client_error(code), operation="GetObject", context=context)
    assert type(err) is kind
    assert err.reason == reason


def test_network_errors_are_transient() -> None:
    assert isinstance(classify(EndpointConnectionError(endpoint_url="http://x"),
                               operation="GetObject"), errors.RetryNow)
    assert isinstance(classify(ReadTimeoutError(endpoint_url="http://x"),
                               operation="GetObject"), errors.RetryNow)
    assert isinstance(classify(ConnectionResetError(), operation="UploadPart"),
                      errors.RetryNow)


def test_branches_say_what_the_caller_must_do() -> None:
    assert issubclass(errors.SourceChanged, errors.Redeliver)
    assert issubclass(errors.BadMessage, errors.GiveUp)
    assert issubclass(errors.ExpiredCredentials, errors.GiveUp)
    assert not issubclass(errors.ExpiredCredentials, errors.RetryNow)


async def test_retry_retries_transient_then_succeeds() -> None:
    calls = []

    async def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise errors.RetryNow("503")
        return "ok"

    assert await retrying(flaky, RetryPolicy(attempts=5, base_delay=0.001)) == "ok"
    assert len(calls) == 3


async def test_retry_never_retries_expired_credentials() -> None:
    calls = []

    async def expired() -> None:
        calls.append(1)
        raise errors.ExpiredCredentials("expired")

    with pytest.raises(errors.ExpiredCredentials):
        await retrying(expired, RetryPolicy(attempts=5, base_delay=0.001))
    assert len(calls) == 1


async def test_retry_gives_up_after_the_attempt_budget() -> None:
    calls = []

    async def always() -> None:
        calls.append(1)
        await asyncio.sleep(0)
        raise errors.RetryNow("503")

    with pytest.raises(errors.RetryNow):
        await retrying(always, RetryPolicy(attempts=4, base_delay=0.001))
    assert len(calls) == 4


def test_a_bug_of_ours_is_not_blamed_on_s3() -> None:
    err = classify(TypeError("oops"), operation="GetObject", context="source")
    assert isinstance(err, errors.GiveUp) and err.reason == "internal:TypeError"


def test_a_call_site_translates_in_one_block_and_passes_our_own_errors_through() -> None:
    with pytest.raises(errors.AccessDenied) as denied, translated("PutObject", "destination"):
        raise client_error("AccessDenied", 403)
    assert isinstance(denied.value.__cause__, ClientError)
    assert "PutObject on destination: AccessDenied" in str(denied.value)
    mine = errors.SourceChanged("moved")
    with pytest.raises(errors.SourceChanged) as passed, translated("GetObject", "source"):
        raise mine
    assert passed.value is mine
    with pytest.raises(errors.RetryNow), translated("GetObject"):
        raise EndpointConnectionError(endpoint_url="http://127.0.0.1:9")
