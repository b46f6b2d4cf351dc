"""Every deployment of a running zpipe, declared in one place: schedules and triggers.

- one `weekly-campaign` deployment per campaign that has a `schedule:` (cron + timezone);
- one hourly `ingest-trends` deployment per campaign with trend sources;
- `comment-reply/on-comment`, triggered by the intake's `zpipe.comment.received` event;
- `review-expired/on-review-timeout`, triggered when a campaign run fails (a review timed out);
- `review-held-images/on-held`, triggered when the QA gate holds images (`zpipe.image.held`).

`zpipe serve` serves them all from one long-lived process (each run in a new process);
`infra/prefect.yaml` declares the same for a work pool.

Served runs ride out a Prefect server restart: their API calls retry for minutes
(`SERVED_CLIENT_RETRIES`), batches the server's queue forgot are handed to workers again
(`tasks.orchestration.handover.HandedOver`), and a rerun makes only the images still missing.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from prefect import serve
from prefect.deployments.runner import EntrypointType, RunnerDeployment
from prefect.events.schemas.automations import Posture
from prefect.events.schemas.deployment_triggers import DeploymentEventTrigger
from prefect.schedules import Cron
from prefect.settings import PREFECT_CLIENT_MAX_RETRIES, temporary_settings

from flows.campaign import weekly_campaign
from flows.comment import comment_reply
from flows.names import ANSWERED_EVENT, COMMENT_DEPLOYMENT, COMMENT_EVENT, COMMENT_RESOURCE_PREFIX
from flows.review import held_review_deployment, review_deployment
from flows.trends import ingest_trends_flow
from tasks.config.schema import load_campaign, load_settings
from tasks.core.settings import env_value
from tasks.steps.comments import FALLBACK_DELAY_S

TRENDS_CRON = "0 * * * *"  # hourly: hot lists move within hours
# Runs import flows as `flows.campaign` etc. (not by file path), so task workers that receive
# the run's context can import the same modules.
MODULE = EntrypointType.MODULE_PATH
# Exponential backoff 2, 4, ... 256 s: about 8.5 minutes of retries (Prefect's default of 5
# gives up after about one), long enough for a server restart or upgrade.
SERVED_CLIENT_RETRIES = 8


def campaign_files(campaigns_dir: Path) -> list[Path]:
    """The campaign YAML files of a directory, in name order."""
    return sorted(p.resolve() for p in campaigns_dir.glob("*.yaml"))


def build_deployments(campaigns_dir: Path, brands_dir: Path,
                      settings: Path | None = None) -> list[RunnerDeployment]:
    """Deployments for every scheduled campaign, its trends, and comment replies."""
    settings_param = {"settings": str(settings.resolve())} if settings else {}
    deployments: list[RunnerDeployment] = []
    for path in campaign_files(campaigns_dir):
        bundle = load_campaign(path)
        campaign = bundle.campaign
        tags = [f"brand:{bundle.brand.slug}", f"campaign:{campaign.name}"]
        if campaign.schedule is not None:
            deployments.append(weekly_campaign.to_deployment(
                name=campaign.name, entrypoint_type=MODULE,
                schedules=[Cron(campaign.schedule.cron, timezone=campaign.schedule.timezone)],
                parameters={"campaign": str(path), **settings_param},
                description=f"{campaign.name}: one week of images for {bundle.brand.name}",
                tags=tags))
        if campaign.trends.sources:
            deployments.append(ingest_trends_flow.to_deployment(
                name=f"{campaign.name}-hourly", entrypoint_type=MODULE,
                schedules=[Cron(TRENDS_CRON, timezone=campaign.timezone)],
                parameters={"campaign": str(path), **settings_param},
                description=f"hourly trend pull for {campaign.name}", tags=tags))
    fast_path = (load_settings(settings).generation == "workers"
                 and bool(env_value("intake_fast_path")))
    deployments.append(comment_reply.to_deployment(
        name=COMMENT_DEPLOYMENT, entrypoint_type=MODULE, triggers=[comment_trigger(fast_path)],
        parameters={"brands_dir": str(brands_dir.resolve()), **settings_param},
        description="answer a user comment with a labelled reply image", tags=["comments"]))
    deployments.append(review_deployment())
    deployments.append(held_review_deployment())
    return deployments


def comment_trigger(fast_path: bool, within_s: float = FALLBACK_DELAY_S) -> DeploymentEventTrigger:
    """What turns the intake's `zpipe.comment.received` event into a comment-reply run.

    Without the fast path: a run at once, for every comment. With it (resident workers answer
    each comment within about a second, `flows.comment.reply_on_worker`) the run is only the
    fallback: a proactive trigger makes one for a comment whose `zpipe.comment.answered` event
    did not follow within `within_s` (no worker took it, or it died). A run made for every
    comment anyway (due later, then closed unstarted once the worker answered) cost Prefect's
    server three writes per comment at the very moment of the worker's hand-off: on SQLite they
    collided (503 "database is locked", then the client's 2 s back-off), and that was the whole
    SQLite p95 of the fast path (2026-12-08: 3.47 s with those runs, 1.31 s without). A worker
    whose reply fails starts the fallback itself, at once (`start_fallback_run`).
    """
    comment = {"prefect.resource.id": f"{COMMENT_RESOURCE_PREFIX}*"}
    parameters = {"comment_id": "{{ event.payload.id }}", "brand": "{{ event.payload.brand }}"}
    if not fast_path:
        return DeploymentEventTrigger(name="comment received", expect={COMMENT_EVENT}, match=comment,
                                      parameters=parameters)
    # the bucket is per comment; its last event (what `event` means above) is the received
    # one, since a comment that was answered never fires
    return DeploymentEventTrigger(
        name="comment not answered on the fast path", posture=Posture.Proactive,
        after={COMMENT_EVENT}, expect={ANSWERED_EVENT}, for_each={"prefect.resource.id"},
        match=comment, threshold=1, within=timedelta(seconds=within_s), parameters=parameters)


def serve_all(campaigns_dir: Path, brands_dir: Path, settings: Path | None = None,
              limit: int = 4) -> None:
    """Serve every deployment from this process until stopped (each run in a new process).

    Each run's process inherits the client retries set here (a larger user setting wins).
    """
    deployments = build_deployments(campaigns_dir, brands_dir, settings)
    retries = max(PREFECT_CLIENT_MAX_RETRIES.value(), SERVED_CLIENT_RETRIES)
    with temporary_settings({PREFECT_CLIENT_MAX_RETRIES: retries}):
        serve(*deployments, limit=limit)
