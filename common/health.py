"""Liveness and readiness of a long-running process, answered beside ``/metrics``.

* ``/healthz`` (live): the process's event loop still turns. A task on the loop marks it every
  second (:meth:`Health.keep_beating`); an answer from the metrics thread alone would stay
  green while the loop is stuck.
* ``/readyz`` (ready): the process can do its work now. A worker is ready once its clients are
  open and a ReceiveMessage succeeded, and not ready again from a failed receive until one
  succeeds.

Both answer 200 or 503 with a one-line reason. The state is a few attributes written by the
loop and read by the metrics thread; each is replaced whole, so a reader never sees half of
an update.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

BEAT_SECONDS = 1.0
LIVE_WITHIN_SECONDS = 10.0


@dataclass
class Health:
    _beat: float = field(default_factory=time.monotonic)
    _ready: bool = False
    _why: str = "starting"

    def live(self) -> tuple[bool, str]:
        late = time.monotonic() - self._beat
        if late > LIVE_WITHIN_SECONDS:
            return False, f"event loop has not turned for {late:.0f} s"
        return True, "event loop turning"

    def readiness(self) -> tuple[bool, str]:
        return self._ready, self._why

    def ready(self, why: str = "receiving") -> None:
        self._ready, self._why = True, why

    def not_ready(self, why: str) -> None:
        self._ready, self._why = False, why

    async def keep_beating(self) -> None:
        """Mark the loop alive every second until cancelled."""
        while True:
            self._beat = time.monotonic()
            await asyncio.sleep(BEAT_SECONDS)
