"""Store steps."""

from __future__ import annotations

from prefect import task

from tasks.steps.policies import NEVER_CACHE, UPLOAD_RETRY
from tasks.store.objects import store_at


@task(name="upload", cache_policy=NEVER_CACHE, timeout_seconds=120, **UPLOAD_RETRY)
def upload_task(
    store_url: str,
    key: str,
    data: bytes,
    content_type: str,
    metadata: dict[str, str],
    overwrite: bool = False,
) -> bool:
    """Upload bytes to the store at `store_url`; False if the key already existed."""
    return store_at(store_url).put(key, data, content_type, metadata, overwrite=overwrite)
