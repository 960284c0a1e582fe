"""Task bodies of `lytics_audiences_to_braze`: Airflow context and Connections in, core calls out.

    plan_audiences     -> include.audiences_to_braze.config (read once: the run's frozen configuration)
    snapshot_audience  -> hooks.lytics (scan) -> include.audiences_to_braze.planning.snapshot_audience
    plan_changes       -> include.audiences_to_braze.planning.plan_changes (diff, merge, chunks, guard)
    approve_changes    -> GuardApprovalOperator: the providers' ApprovalOperator, asked only when the
                          plan's guard tripped (include.audiences_to_braze.guard words the request)
    deliver_chunk      -> hooks.braze (/users/track) -> include.audiences_to_braze.delivery.deliver_chunk
    commit, report     -> include.audiences_to_braze.commit

The configuration is read once, by `plan_audiences`, and travels to every later task through
XCom: a task cleared after someone edited the YAML still runs with the settings its run was
planned with (batch size, rate budget, state store, approval timeout, ...).
"""

from __future__ import annotations

import logging
from datetime import timedelta

from airflow.providers.standard.operators.hitl import ApprovalOperator

from braze_lytics.failures import fail_fast_on_permanent_errors

log = logging.getLogger(__name__)

APPROVAL_TASK_ID = "approve_changes"
DEFAULT_APPROVAL_TIMEOUT = timedelta(hours=12)  # replaced at run time by the run's `approval_timeout_hours`


def _frozen(config: dict):
    from include.audiences_to_braze.config import AudienceSyncConfig

    return AudienceSyncConfig.from_dict(config)


def state_store(config):
    """The state store: config `state_url`, else $BRAZE_LYTICS_STATE_URL, else under $AIRFLOW_HOME.

    ``s3://<conn_id>@bucket/prefix`` takes the credentials from that Airflow connection.
    """
    from braze_lytics.hooks.state_store import open_state_store
    from include.common import settings

    return open_state_store(config.state_url or settings.default_state_url())


def _plan_options(config, params: dict):
    from include.audiences_to_braze.planning import PlanOptions

    return PlanOptions.for_run(config, params)


def _run_key(context) -> str:
    from include.audiences_to_braze.run_files import run_key_for

    return run_key_for(context["run_id"])


def plan_audiences(params: dict, context) -> list[dict]:
    """Read and validate the configuration once; push it (XCom key `config`) and return the audiences to map over.

    Audiences to retire (config `retire` or the run's `retire` param) are mapped too, flagged
    `retire`: they are not scanned, and the plan removes their slug from every committed member.
    Committed audiences that are neither configured nor retired are named in a warning.
    """
    from braze_lytics.trigger_forms import refuse_unknown_conf
    from include.audiences_to_braze.config import load_audience_config
    from include.audiences_to_braze.planning import unconfigured_committed_audiences
    from include.common.errors import ConfigError

    with fail_fast_on_permanent_errors():
        refuse_unknown_conf(context)
        config = load_audience_config()
        audiences = config.select(params.get("audiences") or [])
        configured = {a.slug for a in config.audiences}
        retire = sorted(set(config.retire) | set(params.get("retire") or []))
        still = sorted(set(retire) & configured)
        if still:
            raise ConfigError(f"the run's 'retire' param names {still}, which {config.path} still lists under "
                              f"audiences: remove them there first (or leave them out of 'retire')")
        leftover = unconfigured_committed_audiences(state_store(config), configured)
    to_retire = [slug for slug in retire if slug in leftover]
    for slug in sorted(set(retire) - set(to_retire)):
        log.info("Retire %s: nothing was ever committed for it (or it is already retired); nothing to do", slug)
    forgotten = sorted(set(leftover) - set(retire))
    if forgotten:
        log.warning("Audiences %s were synced before but are no longer configured: their slug stays on every Braze "
                    "profile it was delivered to. To remove it, list them under 'retire:' in %s (or trigger a run "
                    "with the 'retire' param); the removes go through the guard.", forgotten, config.path)
    context["ti"].xcom_push(key="config", value=config.to_dict())
    context["ti"].xcom_push(key="unconfigured_audiences", value=forgotten)
    log.info("Configuration %s. Audiences to sync: %s%s%s%s", config.path, [a.slug for a in audiences],
             f"; to retire: {to_retire}" if to_retire else "", " (dry run)" if params.get("dry_run") else "",
             " (full resync)" if params.get("full_resync") else "")
    return ([{"slug": a.slug, "id": a.id, "retire": False} for a in audiences]
            + [{"slug": slug, "id": slug, "retire": True} for slug in to_retire])


def snapshot_audience(audience: dict, config: dict, context) -> dict:
    from braze_lytics.hooks.lytics import LyticsHook
    from include.audiences_to_braze.config import AudienceRef
    from include.audiences_to_braze.planning import snapshot_audience as snapshot

    context["audience_label"] = audience["slug"] + (" (retire)" if audience.get("retire") else "")
    with fail_fast_on_permanent_errors():
        cfg = _frozen(config)
        client = LyticsHook(cfg.lytics_conn_id).get_conn()
        return snapshot(state_store(cfg), _run_key(context), AudienceRef(slug=audience["slug"], id=audience["id"]),
                        lambda audience_id: client.scan_ids(
                            audience_id, cfg.id_field, limit=cfg.scan_page_size,
                            total_tolerance_share=cfg.scan_total_tolerance_share,
                            total_tolerance_members=cfg.scan_total_tolerance_members),
                        retire=bool(audience.get("retire")))


def plan_changes(scans: list[dict], config: dict, context) -> list[int]:
    """Diff, merge and chunk; returns the chunk numbers to map delivery over (none on a dry run)."""
    from braze_lytics.mapped_results import mapped_results
    from include.audiences_to_braze.planning import plan_changes as plan

    with fail_fast_on_permanent_errors():
        cfg = _frozen(config)
        result = plan(state_store(cfg), _run_key(context), mapped_results(scans), _plan_options(cfg, context["params"]))
    if result["dry_run"]:
        log.info("Dry run: planned payloads written to %s; nothing is sent or committed", result["payload_file"])
        return []
    return list(range(result["chunks"]))


# ---------------------------------------------------------------------------------------- approval
def approval_request(config: dict, context) -> dict | None:
    """What `approve_changes` asks the on-call person, or None when the run need not wait.

    It waits only when the plan's guard tripped on a real run without `allow_large_change`; the
    verdict is logged whatever happens.
    """
    from include.audiences_to_braze import guard, run_files

    with fail_fast_on_permanent_errors():
        cfg = _frozen(config)
        store = state_store(cfg)
        key = run_files.plan_key(_run_key(context))
        plan = store.read_json(key)
    verdict = plan.get("guard")
    if verdict is None:  # planned before the guard existed (a run in flight during an upgrade)
        log.warning("This run's plan has no guard verdict (planned by an older version); not asking for approval")
        return None
    if not verdict["tripped"]:
        log.info("Guard: every audience is within the limits %s; no approval needed", verdict["limits"])
        return None
    findings = guard.describe(plan)
    if verdict["approval"] != "required":
        log.warning("Guard tripped, but this run does not wait (%s):\n%s", verdict["approval"], findings)
        return None
    log.warning("Guard tripped; waiting for approval under Required actions (at most %g h):\n%s",
                cfg.approval_timeout_hours, findings)
    return {"subject": guard.approval_subject(plan),
            "body": guard.approval_body(plan, timeout_hours=cfg.approval_timeout_hours, plan_path=store.path(key),
                                        id_field=cfg.id_field),
            "timeout": timedelta(hours=cfg.approval_timeout_hours)}


class GuardApprovalOperator(ApprovalOperator):
    """`ApprovalOperator` that asks only when the run's guard tripped, and skips itself otherwise.

    Subject, body (the guard's numbers, Markdown) and `response_timeout` (the run's frozen
    `approval_timeout_hours`) are set when it runs. "Reject" fails it, and so does no answer
    within the timeout (no `defaults`): either way every delivery and the commit stay unrun. Those
    failures are not retried (a retry would ask again, not answer); a failure before asking
    (e.g. the state store could not be read) is.
    """

    def __init__(self, **kwargs) -> None:
        kwargs.setdefault("subject", "Lytics → Braze: approve unusual audience changes")
        kwargs.setdefault("response_timeout", DEFAULT_APPROVAL_TIMEOUT)
        super().__init__(fail_on_reject=True, **kwargs)

    def execute(self, context):
        from airflow.sdk.exceptions import AirflowSkipException

        config = context["ti"].xcom_pull(task_ids="plan_audiences", key="config")
        request = approval_request(config, context)
        if request is None:
            raise AirflowSkipException("no approval needed (see the log for the guard's verdict)")
        self.subject, self.body, self.response_timeout = request["subject"], request["body"], request["timeout"]
        return super().execute(context)

    def execute_complete(self, context, event):
        from airflow.providers.standard.exceptions import HITLRejectException, HITLTriggerEventError
        from airflow.sdk.exceptions import AirflowFailException

        who = (event.get("responded_by_user") or {}).get("name")
        try:
            answer = super().execute_complete(context=context, event=event)
        except HITLRejectException as exc:
            raise AirflowFailException(
                f"Rejected by {who}: nothing was sent to Braze and nothing is committed. "
                f"Fix the cause (see the request above / the plan's guard); the next run asks again if the "
                f"change is still this large.") from exc
        except HITLTriggerEventError as exc:  # HITLTimeoutError among them
            raise AirflowFailException(
                f"No approval: {event.get('error', exc)}. Nothing was sent to Braze and nothing is committed. "
                f"Clear {APPROVAL_TASK_ID} to be asked again.") from exc
        log.info("Approved by %s: delivering", who)
        return answer


def _require_approval(store, run_key: str, context) -> dict:
    """The run's plan; fails when its guard required an approval that `approve_changes` did not give
    (e.g. the task was marked skipped or successful by hand instead of answered)."""
    from airflow.sdk.exceptions import AirflowFailException

    from include.audiences_to_braze import run_files

    plan = store.read_json(run_files.plan_key(run_key))
    if (plan.get("guard") or {}).get("approval") == "required":
        answer = context["ti"].xcom_pull(task_ids=APPROVAL_TASK_ID) or {}
        if list(answer.get("chosen_options") or []) != [ApprovalOperator.APPROVE]:
            raise AirflowFailException(
                f"the guard stopped this run ({', '.join(plan['guard']['tripped_audiences'])}) and it was not approved "
                f"in {APPROVAL_TASK_ID} (answer: {answer.get('chosen_options')}); nothing is sent or committed. "
                f"Clear {APPROVAL_TASK_ID} to be asked again and answer under Required actions.")
        log.info("Guard tripped and approved by %s at %s", (answer.get("responded_by_user") or {}).get("name"),
                 answer.get("responded_at"))
    return plan


def deliver_chunk(chunk: int, config: dict, context) -> dict:
    from braze_lytics.hooks.braze import BrazeHook
    from include.audiences_to_braze.delivery import deliver_chunk as deliver
    from include.audiences_to_braze.delivery import shared_budget
    from include.common.rate_limit import RateLimiter

    context["chunk_label"] = f"chunk {chunk}"
    with fail_fast_on_permanent_errors():
        cfg = _frozen(config)
        store = state_store(cfg)
        _require_approval(store, _run_key(context), context)
        # The workspace budget is shared by the run's delivery tasks that are sending (leases in the
        # state store): a task alone paces the whole budget, N tasks a share each.
        limiter = RateLimiter(cfg.rate_limit_requests, cfg.rate_limit_seconds)
        client = BrazeHook(cfg.braze_conn_id).get_track_client(limiter, batch_limit=cfg.batch_size)
        with shared_budget(store, _run_key(context), chunk, limiter, limit=cfg.rate_limit_requests,
                           slots=cfg.delivery_concurrency):
            progress = deliver(store, _run_key(context), chunk, client.track,
                               _plan_options(cfg, context["params"]), update_existing_only=cfg.update_existing_only)
    return {k: progress[k] for k in ("sent", "requests", "retries")} | {"dead_lettered": len(progress["failed"])}


def commit(config: dict, context) -> dict | None:
    from include.audiences_to_braze import run_files
    from include.audiences_to_braze.commit import commit_run

    if context["params"].get("dry_run"):
        log.info("Dry run: nothing committed")
        return None
    with fail_fast_on_permanent_errors():
        store = state_store(_frozen(config))
        run_key = _run_key(context)
        plan = _require_approval(store, run_key, context)
        scans = [store.read_json(run_files.scan_marker(run_key, slug)) for slug in plan["audiences"]]
        return commit_run(store, run_key, plan, scans)


def _housekeeping(store, run_key: str, cfg) -> None:
    """Delete old runs' leftovers (best effort: a failure here is logged, never fails the run)."""
    from datetime import UTC, datetime

    from include.audiences_to_braze.housekeeping import prune
    from include.common.errors import BrazeLyticsError

    try:
        prune(store, current_run_key=run_key, older_than=timedelta(days=cfg.prune_after_days), now=datetime.now(UTC))
    except BrazeLyticsError as exc:
        log.warning("Housekeeping of the state store failed (the run's result stands; the next run tries "
                    "again): %s", exc)


def report(config: dict | None, context) -> dict:
    from airflow.sdk.exceptions import AirflowFailException

    from include.audiences_to_braze import run_files
    from include.audiences_to_braze.commit import run_report

    # report is the DAG's only leaf: it must fail when the run did not get as far as a plan.
    if config is None:
        raise AirflowFailException("this run has no configuration: plan_audiences failed (see its log, usually "
                                   "the configuration file)")
    store = state_store(_frozen(config))
    run_key = _run_key(context)
    plan_key = run_files.plan_key(run_key)
    if not store.exists(plan_key):
        raise AirflowFailException("this run has no plan: scanning or planning failed; see those tasks' logs")
    plan = store.read_json(plan_key)
    summary = run_report(store, run_key, plan)
    verdict = plan.get("guard")
    summary["guard"] = verdict
    summary["unconfigured_audiences"] = context["ti"].xcom_pull(task_ids="plan_audiences",
                                                                key="unconfigured_audiences") or []
    if summary["unconfigured_audiences"]:
        log.warning("Audiences %s are no longer configured but their slug is still on Braze profiles: list them "
                    "under 'retire:' to remove it", summary["unconfigured_audiences"])
    lines = ["| audience | members | adds | removes | skipped (no id) | invalid ids | requests | retries | dead-lettered "
             "| data points | guard |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for slug, a in summary["audiences"].items():
        checked = a.get("guard")
        flag = "-" if checked is None else ("TRIPPED" if checked["tripped"] else "ok")
        name = f"{slug} (retired)" if a.get("retire") else slug
        lines.append(f"| {name} | {a['members']:,} | {a['adds']:,} | {a['removes']:,} | {a['skipped_no_id']:,} | "
                     f"{a.get('invalid_ids', 0):,} | {a['requests']:,} | {a['retries']:,} | {a['dead_lettered']:,} | "
                     f"{a['estimated_data_points']:,} | {flag} |")
    log.info("Run summary%s:\n%s", " (dry run)" if summary["dry_run"] else "", "\n".join(lines))
    if summary["parked"]:
        log.warning("%d user(s) were parked: Braze rejected them %d runs in a row, so they are no longer sent "
                    "(dead_letter/parked/ in the state store); e.g. %s", summary["parked"],
                    plan["options"].get("park_after_runs"), summary["parked_sample"][:3])
    _housekeeping(store, run_key, _frozen(config))
    if verdict and verdict["tripped"]:
        from include.audiences_to_braze.guard import describe

        log.warning("Guard tripped (approval: %s):\n%s", verdict["approval"], describe(plan))
    if not summary["dry_run"] and not store.exists(run_files.committed_marker(run_key)):
        answer = context["ti"].xcom_pull(task_ids=APPROVAL_TASK_ID) or {}
        approved = list(answer.get("chosen_options") or []) == [ApprovalOperator.APPROVE]
        if verdict and verdict["approval"] == "required" and not approved:
            raise AirflowFailException(
                f"the guard stopped this run ({', '.join(verdict['tripped_audiences'])}) and it was not approved "
                f"(rejected, or no answer within approval_timeout_hours; see {APPROVAL_TASK_ID}): nothing was sent "
                f"or committed. If the change is real, clear {APPROVAL_TASK_ID} and approve it, or trigger a run "
                f"with allow_large_change; otherwise fix the cause in Lytics or the pipeline file - the next run "
                f"diffs against the same committed state.")
        raise AirflowFailException("this run was not committed (a delivery failed): the next run re-sends its "
                                   "changes; clear the failed deliver_chunk tasks to finish this one")
    return summary
