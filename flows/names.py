"""Names shared by the processes of a running zpipe: events, limits, flows.

Schedules and triggers themselves are declared in `flows/deployments.py`.
"""

from tasks.generate import GPU_CONCURRENCY_LIMIT

COMMENT_EVENT = "zpipe.comment.received"          # emitted by the intake, triggers comment-reply
COMMENT_RESOURCE_PREFIX = "zpipe.comment."         # + comment id
CAMPAIGN_FLOW = "weekly-campaign"
COMMENT_FLOW = "comment-reply"
TRENDS_FLOW = "ingest-trends"

__all__ = ["CAMPAIGN_FLOW", "COMMENT_EVENT", "COMMENT_FLOW", "COMMENT_RESOURCE_PREFIX",
           "GPU_CONCURRENCY_LIMIT", "TRENDS_FLOW"]
