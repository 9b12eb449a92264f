"""When to retry a request and how long to wait: 429/503 and refused connections, honouring Retry-After."""

from __future__ import annotations

import email.utils
import math
import time
from dataclasses import dataclass

import httpx


@dataclass(frozen=True)
class Retry:
    """Bounded retries. Waits follow the server's Retry-After when it sends one, else exponential backoff."""

    attempts: int = 5  # tries in all, the first included
    backoff_s: float = 0.5  # first wait without Retry-After; doubles each time
    max_wait_s: float = 60.0  # cap on any single wait, Retry-After included
    statuses: frozenset[int] = frozenset({429, 503})

    def should_retry(self, response: httpx.Response) -> bool:
        return response.status_code in self.statuses

    def delay(self, failures: int, response: httpx.Response | None) -> float:
        """Seconds to wait after the ``failures``-th failed try (1-based)."""
        hinted = retry_after_s(response) if response is not None else None
        wait = hinted if hinted is not None else self.backoff_s * 2 ** (failures - 1)
        return min(max(wait, 0.0), self.max_wait_s)


def retry_after_s(response: httpx.Response) -> float | None:
    """The Retry-After header in seconds, or None when absent or unusable: delta-seconds count only
    when finite and non-negative (``nan``, ``inf``, ``-1`` are None); an HTTP date gives the seconds
    until then, 0 when it has passed."""
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - time.time(), 0.0)
