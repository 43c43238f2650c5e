"""One exception tree, split by what the caller must do.

    FerryError
    ├── RetryNow              transient; retry in process with jittered backoff
    │                         (503 SlowDown, 500, connection resets, timeouts)
    ├── Redeliver             leave the message; SQS delivers it again after its lease
    │   ├── SourceChanged     the source's ETag moved while we copied; a retry copies the new one
    │   ├── UploadGone        our multipart upload was completed or aborted by another attempt
    │   │                     (NoSuchUpload): re-check the destination before anything else
    │   ├── UploadBusy        another attempt may be driving an upload of this key: step back
    │   └── AnswerLost        a call that must not be repeated (CreateMultipartUpload) got no
    │                         answer: the next attempt looks at what the store did
    ├── GiveUp                never succeeds by retrying: to the dead-letter queue with ``reason``
    │   ├── BadMessage        malformed, oversized or unknown-version job message
    │   ├── AccessDenied      403 / AccessDenied / AllAccessDisabled
    │   ├── NoSuchBucket
    │   ├── ExpiredCredentials  expired or invalid keys; never retried
    │   ├── VerificationFailed  the destination does not match what was read
    │   └── Unsupported       a copy this endpoint pair cannot make (e.g. > max object size)
    ├── SourceUnavailable     not a failure of ours: recorded with a reason, message settled
    │   ├── SourceVanished    NoSuchKey: deleted after the job was queued
    │   └── SourceArchived    InvalidObjectState: GLACIER / DEEP_ARCHIVE / archive tiers
    └── ConfigError           bad settings, raised at start, never at copy time

botocore errors are translated in exactly one place, :func:`common.s3errors.classify`.

Any error may carry ``retry_after``: the fewest seconds before the job may be tried again
(an upload kept for the next attempt must look quiet to it; see :mod:`worker.multipart`).
"""

from __future__ import annotations


class FerryError(Exception):
    """Base of every error s3ferry raises on purpose."""

    reason: str = "error"
    retry_after: float = 0.0

    def __init__(self, message: str = "", *, reason: str | None = None,
                 retry_after: float = 0.0) -> None:
        super().__init__(message or self.reason)
        if reason is not None:
            self.reason = reason
        self.retry_after = retry_after


class RetryNow(FerryError):
    reason = "transient"


class Redeliver(FerryError):
    reason = "redeliver"


class SourceChanged(Redeliver):
    reason = "source_changed"


class UploadGone(Redeliver):
    reason = "upload_gone"


class UploadBusy(Redeliver):
    reason = "upload_busy"


class AnswerLost(Redeliver):
    reason = "answer_lost"


class GiveUp(FerryError):
    reason = "permanent"


class BadMessage(GiveUp):
    reason = "bad_message"


class AccessDenied(GiveUp):
    reason = "access_denied"


class NoSuchBucket(GiveUp):
    reason = "no_such_bucket"


class ExpiredCredentials(GiveUp):
    reason = "expired_credentials"


class VerificationFailed(GiveUp):
    reason = "verification_failed"


class Unsupported(GiveUp):
    reason = "unsupported"


class SourceUnavailable(FerryError):
    reason = "outcome"


class SourceVanished(SourceUnavailable):
    reason = "source_vanished"


class SourceArchived(SourceUnavailable):
    reason = "source_archived"


class ConfigError(FerryError):
    reason = "config"
