"""Named retry and cache policies for the steps: one reason each, used on the decorators."""

from __future__ import annotations

from typing import Any

from prefect.cache_policies import NO_CACHE

# Every step reads or writes the store, the engine or the clock: a cached result would hide
# a change (an image deleted, a trend refreshed), so no step caches its result.
NEVER_CACHE = NO_CACHE

STORE_RETRY: dict[str, Any] = {"retries": 2, "retry_delay_seconds": 2}  # rides out a store blip
LEDGER_RETRY: dict[str, Any] = {"retries": 2, "retry_delay_seconds": 1}  # small records, quick again
UPLOAD_RETRY: dict[str, Any] = {"retries": 3, "retry_delay_seconds": [1, 2, 4]}  # backoff for S3
SOURCE_RETRY: dict[str, Any] = {"retries": 1, "retry_delay_seconds": 10}  # feeds: once, later
ENGINE_RETRY: dict[str, Any] = {"retries": 1, "retry_delay_seconds": 5}  # one more try of a batch
