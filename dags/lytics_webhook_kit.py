"""
### Braze -> Lytics webhook kit (runbook)

**What it does.** Nothing on a schedule: trigger it by hand when setting up (or checking) the
real-time import path, in which a Braze Canvas/campaign **webhook step** posts a user's fields to
Lytics' `braze_users` stream. One task, **webhook_kit**, reads the `lytics_default` connection and
logs what the Braze webhook step needs:

1. the **webhook URL**, `https://api.lytics.io/c/<ACCOUNT-NUMBER>/braze_users?key=****abcd` - the
   key is **masked** (the log and XCom are readable by every UI user). The full URL holds the API
   token: build it from the token, or print it with `braze-lytics-webhook-kit --conn-id
   lytics_default --show-key` on a worker;
2. the HTTP method (`POST`) and header (`Content-Type: application/json`);
3. the JSON **body** with Braze Liquid for exactly the fields of Lytics' `braze_users` stream
   (email, braze_id, names, date of birth as YYYYMMDD, ...), and where Lytics maps each one.

With **send_test_event**, it then POSTs one test event to that URL, exactly as Braze would (a user
with email `webhook-kit-test@example.invalid` and braze_id `webhook-kit-test`), and says **PASS**
or **FAIL** with the reason. A FAIL fails the task at once (no retry).

**Connection** `lytics_default` (type http): host = Lytics API base URL (`https://api.lytics.io`),
password = a Lytics API token (Data Manager scope), extra `{"account_id": "<ACCOUNT-NUMBER>"}`.

**When the test event fails.**
* *401* - Lytics refused the token: expired, revoked, or a token of another account; create a new
  one (Data Manager scope) and update the connection's password.
* *404* - Lytics knows no such account: check `account_id` (Lytics: Account Settings) and the host.
* *not JSON / redirect* - the host is not the Lytics API (a proxy, a login page, http instead of https).
* *could not be reached / still failing after 3 tries* - network, proxy or a Lytics outage; try later.

**Safe to re-run.** Without the test event it only reads the connection. Each test event updates
the same test profile in Lytics; delete that profile once the set-up is done.

Details: docs/webhook-kit.md. Params: `send_test_event` (default off).
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import dag, get_current_context, task

from braze_lytics.dag_defaults import default_args
from braze_lytics.tasks import webhook_kit as kit_tasks
from braze_lytics.trigger_forms import flag


@dag(
    dag_id="lytics_webhook_kit",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    is_paused_upon_creation=True,
    doc_md=__doc__,
    tags=["lytics", "braze", "webhook", "setup"],
    default_args=default_args(),
    params={
        "send_test_event": flag(
            "Send a test event",
            "POST one test event (email webhook-kit-test@example.invalid, braze_id webhook-kit-test) to the "
            "webhook URL, as Braze would, and report PASS or FAIL with the reason. It creates or updates that "
            "test profile in Lytics. This DAG has no schedule: unpausing it on trigger starts nothing else.",
        ),
    },
)
def lytics_webhook_kit():
    @task
    def webhook_kit(params=None) -> dict:
        return kit_tasks.webhook_kit(params, get_current_context())

    webhook_kit()


lytics_webhook_kit()
