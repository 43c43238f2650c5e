"""AWS Signature Version 4 for S3 requests, as a pure function of the request and a clock.

S3's flavour: the canonical URI is the path exactly as sent (already percent-encoded, never
normalised or encoded twice), and the payload hash is either the body's SHA-256 or
``UNSIGNED-PAYLOAD``. Every header handed in is signed (the caller leaves out User-Agent and
anything a proxy may rewrite). The derived signing key is cached per secret, day, region and
service: four HMACs saved on every request.

Nothing here logs: the inputs hold secrets and the output is an Authorization header.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import quote

ALGORITHM = "AWS4-HMAC-SHA256"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
_KEY_CACHE_SIZE = 16


@dataclass(frozen=True, kw_only=True)
class Keys:
    """One frozen set of credentials (botocore's provider refreshes; we take a snapshot)."""

    access_key: str
    secret_key: str
    token: str | None = None

    def __repr__(self) -> str:  # never print the secret or the token
        return f"Keys(access_key={self.access_key!r})"


def canonical_query(params: Iterable[tuple[str, str]]) -> str:
    """``k=v`` pairs sorted, both sides encoded as SigV4 wants; also the query string sent."""
    encoded = sorted((quote(k, safe="-_.~"), quote(v, safe="-_.~")) for k, v in params)
    return "&".join(f"{k}={v}" for k, v in encoded)


class Signer:
    """Signs requests for one region and service, caching the derived keys."""

    def __init__(self, *, region: str, service: str = "s3") -> None:
        self.region = region
        self.service = service
        self._keys: dict[tuple[str, str], bytes] = {}

    def _signing_key(self, secret: str, day: str) -> bytes:
        cached = self._keys.get((secret, day))
        if cached is not None:
            return cached
        key = ("AWS4" + secret).encode("utf-8")
        for part in (day, self.region, self.service, "aws4_request"):
            key = hmac.new(key, part.encode("utf-8"), hashlib.sha256).digest()
        if len(self._keys) >= _KEY_CACHE_SIZE:
            self._keys.clear()
        self._keys[(secret, day)] = key
        return key

    def sign(self, *, method: str, path: str, query: str, headers: Mapping[str, str],
             payload_hash: str, keys: Keys, now: datetime) -> dict[str, str]:
        """The headers to send: ``headers`` plus X-Amz-Date, the payload hash, the session
        token (if any) and Authorization. ``headers`` must hold ``host``; ``now`` is UTC."""
        amz_date = now.strftime("%Y%m%dT%H%M%SZ")
        out = dict(headers)
        out["x-amz-date"] = amz_date
        out["x-amz-content-sha256"] = payload_hash
        if keys.token:
            out["x-amz-security-token"] = keys.token
        canonical = {name.lower(): " ".join(value.split()) for name, value in out.items()}
        names = sorted(canonical)
        signed = ";".join(names)
        request = "\n".join((method, path, query,
                             "".join(f"{n}:{canonical[n]}\n" for n in names), signed,
                             payload_hash))
        scope = f"{amz_date[:8]}/{self.region}/{self.service}/aws4_request"
        to_sign = "\n".join((ALGORITHM, amz_date, scope,
                             hashlib.sha256(request.encode("utf-8")).hexdigest()))
        signature = hmac.new(self._signing_key(keys.secret_key, amz_date[:8]),
                             to_sign.encode("utf-8"), hashlib.sha256).hexdigest()
        out["Authorization"] = (f"{ALGORITHM} Credential={keys.access_key}/{scope}, "
                                f"SignedHeaders={signed}, Signature={signature}")
        return out
