"""Names shared by the processes of a running zpipe: events and flows.

Schedules and triggers themselves are declared in `flows/deployments.py`.
"""

COMMENT_EVENT = "zpipe.comment.received"          # emitted by the intake, triggers comment-reply
COMMENT_RESOURCE_PREFIX = "zpipe.comment."         # + comment id
ANSWERED_EVENT = "zpipe.comment.answered"         # a reply recorded its answer (done or held)
COMMENT_DEPLOYMENT = "on-comment"                  # comment-reply's deployment, triggered by the event
CAMPAIGN_FLOW = "weekly-campaign"
COMMENT_FLOW = "comment-reply"
TRENDS_FLOW = "ingest-trends"
REVIEW_FLOW = "review-expired"
HELD_REVIEW_FLOW = "review-held-images"            # the reviewer's form for what the QA gate held
HELD_EVENT = "zpipe.image.held"                    # emitted when the QA gate holds images: triggers it
HELD_RESOURCE_PREFIX = "zpipe.held."               # + the held images' folder (brand/campaign/week)
CAMPAIGN_FAILED_EVENT = "prefect.flow-run.Failed"  # a review timeout fails the run: triggers REVIEW_FLOW

__all__ = [
           "ANSWERED_EVENT",
           "CAMPAIGN_FAILED_EVENT",
           "CAMPAIGN_FLOW",
           "COMMENT_DEPLOYMENT",
           "COMMENT_EVENT",
           "COMMENT_FLOW",
           "COMMENT_RESOURCE_PREFIX",
           "HELD_EVENT",
           "HELD_RESOURCE_PREFIX",
           "HELD_REVIEW_FLOW",
           "REVIEW_FLOW",
           "TRENDS_FLOW",
]
