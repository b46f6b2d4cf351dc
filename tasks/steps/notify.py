"""Prefect steps for outbound webhooks (the work itself is in `tasks.notify.webhooks`, Prefect-free)."""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task

from tasks.notify.webhooks import OUTBOX, Delivery, Event, WebhookSpec, notify, redeliver
from tasks.steps.policies import NEVER_CACHE
from tasks.store.objects import store_at


@task(name="notify-webhooks", cache_policy=NEVER_CACHE)
def notify_task(store_url: str, specs: list[WebhookSpec], event: Event, subject: str,
                data: dict[str, Any]) -> list[Delivery]:
    """Deliver one event to the brand's receivers; undelivered ones wait in the outbox."""
    logger = get_run_logger()
    done = notify(store_at(store_url), specs, event, subject, data, log=logger.warning)
    for delivery in done:
        if delivery.status == "delivered":
            logger.info("webhook %s delivered to %s (%d attempt(s))", event, delivery.url,
                        delivery.attempts)
    return done


@task(name="redeliver-webhooks", cache_policy=NEVER_CACHE)
def redeliver_task(store_url: str) -> list[Delivery]:
    """Deliver again what earlier runs left in the outbox (one try each, no waiting)."""
    logger = get_run_logger()
    store = store_at(store_url)
    if not store.list(OUTBOX):
        return []
    done = redeliver(store, patience_s=0, log=logger.warning)
    logger.info("webhook outbox: %d delivered, %d still waiting",
                sum(d.status == "delivered" for d in done), sum(d.status != "delivered" for d in done))
    return done
