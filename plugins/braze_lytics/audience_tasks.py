"""Task bodies of `lytics_audiences_to_braze`: Airflow context and Connections in, core calls out."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from braze_lytics.failures import fail_fast_on_permanent_errors

log = logging.getLogger(__name__)

STATE_URL_ENV_VAR = "BRAZE_LYTICS_STATE_URL"


def _config():
    from include.audience_config import load_audience_config

    return load_audience_config()


def state_store(config):
    """The state store: config `state_url`, else $BRAZE_LYTICS_STATE_URL, else under $AIRFLOW_HOME."""
    from include.state_store import StateStore

    default = Path(os.environ.get("AIRFLOW_HOME") or Path.home() / "airflow") / "braze_lytics" / "state"
    return StateStore(config.state_url or os.environ.get(STATE_URL_ENV_VAR) or str(default))


def _plan_options(config, params: dict):
    from include.audience_sync import PlanOptions

    return PlanOptions(attribute=config.attribute, batch_size=config.batch_size,
                       existing_users=config.existing_users, full_resync=bool(params.get("full_resync")),
                       dry_run=bool(params.get("dry_run")), max_chunks=config.max_chunks,
                       min_chunk_users=config.min_chunk_users)


def _run_key(context) -> str:
    from include.audience_sync import run_key_for

    return run_key_for(context["run_id"])


def plan_audiences(params: dict) -> list[dict]:
    with fail_fast_on_permanent_errors():
        config = _config()
        audiences = config.select(params.get("audiences") or [])
    log.info("Audiences to sync: %s%s%s", [a.slug for a in audiences], " (dry run)" if params.get("dry_run") else "",
             " (full resync)" if params.get("full_resync") else "")
    return [{"slug": a.slug, "id": a.id} for a in audiences]


def snapshot_audience(audience: dict, context) -> dict:
    from braze_lytics.hooks.lytics import LyticsHook
    from include.audience_config import AudienceRef
    from include.audience_sync import snapshot_audience as snapshot

    context["audience_label"] = audience["slug"]
    with fail_fast_on_permanent_errors():
        config = _config()
        client = LyticsHook(config.lytics_conn_id).get_conn()
        return snapshot(state_store(config), _run_key(context), AudienceRef(**audience),
                        lambda audience_id: client.scan_ids(audience_id, config.id_field, limit=config.scan_page_size))


def plan_changes(scans: list[dict], context) -> list[int]:
    """Diff, merge and chunk; returns the chunk numbers to map delivery over (none on a dry run)."""
    from include.audience_sync import plan_changes as plan

    with fail_fast_on_permanent_errors():
        config = _config()
        result = plan(state_store(config), _run_key(context), list(scans), _plan_options(config, context["params"]))
    if result["dry_run"]:
        log.info("Dry run: planned payloads written to %s; nothing is sent or committed", result["payload_file"])
        return []
    return list(range(result["chunks"]))


def deliver_chunk(chunk: int, context) -> dict:
    from braze_lytics.hooks.braze import BrazeHook
    from include.audience_sync import deliver_chunk as deliver
    from include.rate_limit import RateLimiter

    context["chunk_label"] = f"chunk {chunk}"
    with fail_fast_on_permanent_errors():
        config = _config()
        # The workspace budget is shared by the pool's parallel deliveries.
        budget = max(1, config.rate_limit_requests // config.delivery_concurrency)
        limiter = RateLimiter(budget, config.rate_limit_seconds)
        client = BrazeHook(config.braze_conn_id).get_track_client(limiter, batch_limit=config.batch_size)
        progress = deliver(state_store(config), _run_key(context), chunk, client.track,
                           _plan_options(config, context["params"]), update_existing_only=config.update_existing_only)
    return {k: progress[k] for k in ("sent", "requests", "retries")} | {"dead_lettered": len(progress["failed"])}


def commit(context) -> dict | None:
    from include.audience_sync import commit_run

    if context["params"].get("dry_run"):
        log.info("Dry run: nothing committed")
        return None
    with fail_fast_on_permanent_errors():
        config = _config()
        store = state_store(config)
        run_key = _run_key(context)
        plan = store.read_json(f"runs/{run_key}/plan.json")
        scans = [store.read_json(f"runs/{run_key}/scans/{slug}.json") for slug in plan["audiences"]]
        return commit_run(store, run_key, plan, scans)


def report(context) -> dict:
    from include.audience_sync import run_report

    config = _config()
    store = state_store(config)
    run_key = _run_key(context)
    plan_key = f"runs/{run_key}/plan.json"
    if not store.exists(plan_key):
        from airflow.sdk.exceptions import AirflowFailException

        # report is the DAG's only leaf: it must fail when the run did not get as far as a plan.
        raise AirflowFailException("this run has no plan: scanning or planning failed; see those tasks' logs")
    summary = run_report(store, run_key, store.read_json(plan_key))
    lines = ["| audience | members | adds | removes | skipped (no id) | requests | retries | dead-lettered | data points |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for slug, a in summary["audiences"].items():
        lines.append(f"| {slug} | {a['members']:,} | {a['adds']:,} | {a['removes']:,} | {a['skipped_no_id']:,} | "
                     f"{a['requests']:,} | {a['retries']:,} | {a['dead_lettered']:,} | {a['estimated_data_points']:,} |")
    log.info("Run summary%s:\n%s", " (dry run)" if summary["dry_run"] else "", "\n".join(lines))
    if not summary["dry_run"] and not store.exists(f"runs/{run_key}/committed.json"):
        from airflow.sdk.exceptions import AirflowFailException

        raise AirflowFailException("this run was not committed (a delivery failed): the next run re-sends its "
                                   "changes; clear the failed deliver_chunk tasks to finish this one")
    return summary
