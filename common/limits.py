"""S3 and SQS limits in one place, with names (AWS documentation, checked in FACTS.md)."""

from __future__ import annotations

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB
TIB = 1024 * GIB

MAX_PARTS = 10_000
# s3ferry's own use of the part numbers: the last one is an adopted upload's claim, never data
# (worker.multipart), so a copy has at most DATA_PARTS parts.
CLAIM_PART = MAX_PARTS
DATA_PARTS = MAX_PARTS - 1
MIN_PART_SIZE = 5 * MIB
MAX_PART_SIZE = 5 * GIB
MAX_SINGLE_PUT = 5 * GIB
MAX_COPY_OBJECT = 5 * GIB
MAX_OBJECT_SIZE = MAX_PARTS * MAX_PART_SIZE  # 48.8 TiB on AWS

MAX_KEY_BYTES = 1024
# Storage classes whose objects must be restored before they can be read or copied.
ARCHIVE_CLASSES = frozenset({"GLACIER", "DEEP_ARCHIVE"})

SQS_MAX_BATCH = 10
SQS_MAX_WAIT_SECONDS = 20
SQS_MAX_VISIBILITY = 43_200
SQS_MAX_DELAY = 900  # DelaySeconds of a message
SQS_MAX_MESSAGE_BYTES = 256 * KIB
