"""The comment event's trigger behind the fast path, on a real Prefect server: a comment whose
`zpipe.comment.answered` event followed gets no comment-reply run; one that was never answered
gets one (the fallback) once the trigger's window closed; a failed fast-path reply starts its
fallback at once. Without the fast path every comment gets a run at once."""

from __future__ import annotations

import time
import uuid

import pytest

from flows.deployments import comment_trigger
from flows.names import ANSWERED_EVENT, COMMENT_DEPLOYMENT, COMMENT_EVENT, COMMENT_RESOURCE_PREFIX

pytestmark = pytest.mark.slow

WINDOW_S = 10  # the trigger's window here (60 s when served; Prefect's least); it looks every ~5 s


@pytest.fixture()
def reply_deployment(prefect_api):
    """comment-reply deployed as `zpipe serve` deploys it with the fast path on (no process
    serves it: its runs stay scheduled), and a reader of its runs by comment."""
    from prefect.client.orchestration import get_client

    from flows.comment import comment_reply

    deployment = comment_reply.to_deployment(name=COMMENT_DEPLOYMENT,
                                             triggers=[comment_trigger(True, within_s=WINDOW_S)])
    deployment_id = deployment.apply()
    with get_client(sync_client=True) as client:

        def runs_for(comment_id: str) -> list:
            return [run for run in client.read_flow_runs(limit=200)
                    if run.deployment_id == deployment_id and run.parameters.get("comment_id") == comment_id]

        yield runs_for
        for run in client.read_flow_runs(limit=200):
            if run.deployment_id == deployment_id:
                client.delete_flow_run(run.id)
        client.delete_resource_owned_automations(f"prefect.deployment.{deployment_id}")
        client.delete_deployment(deployment_id)


def _emit(event: str, comment_id: str) -> None:
    from prefect.events import emit_event

    assert emit_event(event=event, resource={"prefect.resource.id": COMMENT_RESOURCE_PREFIX + comment_id},
                      payload={"id": comment_id, "brand": "demo"}) is not None


def test_only_a_comment_left_unanswered_gets_the_fallback_run(reply_deployment):
    runs_for = reply_deployment
    answered, forgotten = f"fp-answered-{uuid.uuid4().hex[:6]}", f"fp-forgotten-{uuid.uuid4().hex[:6]}"
    time.sleep(2)  # the automation reaches the server's trigger service
    _emit(COMMENT_EVENT, answered)
    _emit(COMMENT_EVENT, forgotten)
    time.sleep(0.5)
    _emit(ANSWERED_EVENT, answered)  # as the resident worker does once the answer is recorded

    deadline = time.monotonic() + 60
    while not runs_for(forgotten):
        assert time.monotonic() < deadline, "the unanswered comment got no fallback run"
        time.sleep(1)
    [fallback] = runs_for(forgotten)
    assert fallback.parameters == {"comment_id": forgotten, "brand": "demo"}  # from the received event
    time.sleep(WINDOW_S)  # past the answered comment's window and the service's next look
    assert runs_for(answered) == [], "a comment answered on the fast path got a run anyway"


def test_a_failed_fast_path_reply_starts_its_fallback_at_once(reply_deployment):
    from prefect import flow

    from flows.comment import start_fallback_run

    runs_for = reply_deployment
    comment_id = f"fp-failed-{uuid.uuid4().hex[:6]}"

    @flow
    def in_a_run() -> None:  # start_fallback_run logs to its run
        start_fallback_run(comment_id, "demo")

    started = time.monotonic()
    in_a_run()
    [run] = runs_for(comment_id)
    assert time.monotonic() - started < WINDOW_S  # made now, not by the trigger's window
    assert run.parameters == {"comment_id": comment_id, "brand": "demo"}
    assert run.state.is_scheduled() and run.parent_task_run_id is None  # its own run, due now


def test_without_the_fast_path_every_comment_gets_a_run_at_once():
    trigger = comment_trigger(False)
    assert trigger.posture.value == "Reactive" and trigger.expect == {COMMENT_EVENT}
    assert trigger.parameters == {"comment_id": "{{ event.payload.id }}",
                                  "brand": "{{ event.payload.brand }}"}
    fallback = comment_trigger(True)
    assert fallback.posture.value == "Proactive" and fallback.after == {COMMENT_EVENT}
    assert fallback.expect == {ANSWERED_EVENT} and fallback.for_each == {"prefect.resource.id"}
    assert fallback.within.total_seconds() == 60 and fallback.threshold == 1


def test_a_comment_the_intake_could_not_hand_over_gets_its_run_at_once(reply_deployment, tmp_path):
    from flows.services.intake import IntakeSettings, create_app, load_brands, post_comment
    from tests.conftest import REPO
    from tests.integration.test_intake import serving

    runs_for = reply_deployment
    secret = "fast-path-fallback-secret-5d1a"

    def no_worker(comment_id: str, brand: str) -> None:
        raise RuntimeError("the Prefect API refused the hand-off")

    emitted = []
    intake = IntakeSettings(secret=secret, store_url=str(tmp_path / "store"),
                            brands=load_brands(REPO / "configs/brands"),
                            emit=lambda **event: emitted.append(event), handoff=no_worker)
    comment_id = f"fp-unhanded-{uuid.uuid4().hex[:6]}"
    with serving(create_app(intake)) as url:
        answer = post_comment(url, secret, {"id": comment_id, "author": "lin", "text": "想要一杯桂花拿铁",
                                            "post_id": "p-1", "brand": "demo"})
        assert answer.status_code == 202, answer.text
        deadline = time.monotonic() + WINDOW_S  # sooner than the trigger's window (no event reached it)
        while not (runs := runs_for(comment_id)):
            assert time.monotonic() < deadline, "no run was started for the comment"
            time.sleep(0.2)
    [run] = runs
    assert run.parameters == {"comment_id": comment_id, "brand": "demo"}
    assert [e["payload"]["id"] for e in emitted] == [comment_id]
