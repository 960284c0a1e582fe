"""Braze's documented request limits, written once (Braze docs: "Track users", "API rate limits";
see docs/vendor-contracts.md#braze-post-userstrack)."""

# Objects per /users/track request across attributes + events + purchases; more -> 400 for the
# whole request (older docs said 75 per array).
MAX_OBJECTS_PER_REQUEST = 75
# Workspaces on the "Monthly Active Users CY 24-25" plan.
MAU_PLAN_MAX_OBJECTS = 50
# Default /users/track rate limit per workspace: this many requests per RATE_LIMIT_SECONDS.
RATE_LIMIT_REQUESTS = 3000
RATE_LIMIT_SECONDS = 3.0
