"""The event's run behind a fast-path reply, on a real Prefect server: deferred while the
reply runs (no second process competes for the CPU), Completed once it answered, started at
once when it failed; runs a process already took, and other comments' runs, are left alone."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tasks.steps.comments import (
    FALLBACK_DELAY_S,
    close_event_runs,
    defer_event_runs,
    release_event_runs,
)

pytestmark = pytest.mark.slow


@pytest.fixture()
def event_runs(prefect_api):
    """A comment-reply deployment and a factory of its triggered-looking runs (SCHEDULED now)."""
    from prefect.client.orchestration import get_client

    from flows.comment import comment_reply

    created = []
    with get_client(sync_client=True) as client:
        flow_id = client.create_flow(comment_reply)
        deployment_id = client.create_deployment(flow_id=flow_id, name="fast-path-test")

        def run_for(comment_id: str):
            run = client.create_flow_run_from_deployment(
                deployment_id, parameters={"comment_id": comment_id, "brand": "demo"})
            created.append(run.id)
            return run.id

        def state_of(run_id):
            return client.read_flow_run(run_id).state

        yield comment_reply.name, run_for, state_of, client
        for run_id in created:
            client.delete_flow_run(run_id)
        client.delete_deployment(deployment_id)


def test_the_event_run_is_deferred_then_closed_when_the_fast_path_answers(event_runs):
    name, run_for, state_of, _ = event_runs
    mine, other = run_for("fp-1"), run_for("fp-2")

    assert defer_event_runs(name, "fp-1", "task-run-x") == 1
    deferred = state_of(mine)
    assert deferred.is_scheduled() and "task-run-x" in deferred.message
    assert deferred.state_details.scheduled_time > datetime.now(UTC) + timedelta(
        seconds=FALLBACK_DELAY_S - 10)
    assert state_of(other).state_details.scheduled_time < datetime.now(UTC) + timedelta(seconds=5)

    assert close_event_runs(name, "fp-1", "task-run-x") == 1
    closed = state_of(mine)
    assert closed.is_completed() and "fast path" in closed.message
    assert state_of(other).is_scheduled()  # another comment's run: untouched


def test_a_failed_fast_path_releases_its_event_run_and_a_started_run_is_left_alone(event_runs):
    from prefect.states import Running

    name, run_for, state_of, client = event_runs
    mine = run_for("fp-3")
    assert defer_event_runs(name, "fp-3", "task-run-y") == 1
    assert release_event_runs(name, "fp-3") == 1
    released = state_of(mine)
    assert released.is_scheduled()
    assert released.state_details.scheduled_time < datetime.now(UTC) + timedelta(seconds=5)

    # a run a process already took keeps its course (it finds the comment answered)
    client.set_flow_run_state(mine, Running(), force=True)
    assert defer_event_runs(name, "fp-3", "task-run-z") == 0
    assert close_event_runs(name, "fp-3", "task-run-z") == 0
    assert state_of(mine).is_running()
