"""Task bodies of `lytics_audiences_to_braze`: Airflow context and Connections in, core calls out.

    plan_audiences     -> include.audiences_to_braze.config (read once: the run's frozen configuration)
    snapshot_audience  -> hooks.lytics (scan) -> include.audiences_to_braze.planning.snapshot_audience
    plan_changes       -> include.audiences_to_braze.planning.plan_changes (diff, merge, chunks)
    deliver_chunk      -> hooks.braze (/users/track) -> include.audiences_to_braze.delivery.deliver_chunk
    commit, report     -> include.audiences_to_braze.commit

The configuration is read once, by `plan_audiences`, and travels to every later task through
XCom: a task cleared after someone edited the YAML still runs with the settings its run was
planned with (batch size, rate budget, state store, ...).
"""

from __future__ import annotations

import logging

from braze_lytics.failures import fail_fast_on_permanent_errors

log = logging.getLogger(__name__)


def _frozen(config: dict):
    from include.audiences_to_braze.config import AudienceSyncConfig

    return AudienceSyncConfig.from_dict(config)


def state_store(config):
    """The state store: config `state_url`, else $BRAZE_LYTICS_STATE_URL, else under $AIRFLOW_HOME."""
    from include.clients.state_store import StateStore
    from include.common import settings

    return StateStore(config.state_url or settings.default_state_url())


def _plan_options(config, params: dict):
    from include.audiences_to_braze.planning import PlanOptions

    return PlanOptions.for_run(config, params)


def _run_key(context) -> str:
    from include.audiences_to_braze.run_files import run_key_for

    return run_key_for(context["run_id"])


def plan_audiences(params: dict, context) -> list[dict]:
    """Read and validate the configuration once; push it (XCom key `config`) and return the audiences to map over."""
    from include.audiences_to_braze.config import load_audience_config

    with fail_fast_on_permanent_errors():
        config = load_audience_config()
        audiences = config.select(params.get("audiences") or [])
    context["ti"].xcom_push(key="config", value=config.to_dict())
    log.info("Configuration %s. Audiences to sync: %s%s%s", config.path, [a.slug for a in audiences],
             " (dry run)" if params.get("dry_run") else "", " (full resync)" if params.get("full_resync") else "")
    return [{"slug": a.slug, "id": a.id} for a in audiences]


def snapshot_audience(audience: dict, config: dict, context) -> dict:
    from braze_lytics.hooks.lytics import LyticsHook
    from include.audiences_to_braze.config import AudienceRef
    from include.audiences_to_braze.planning import snapshot_audience as snapshot

    context["audience_label"] = audience["slug"]
    with fail_fast_on_permanent_errors():
        cfg = _frozen(config)
        client = LyticsHook(cfg.lytics_conn_id).get_conn()
        return snapshot(state_store(cfg), _run_key(context), AudienceRef(**audience),
                        lambda audience_id: client.scan_ids(audience_id, cfg.id_field, limit=cfg.scan_page_size))


def plan_changes(scans: list[dict], config: dict, context) -> list[int]:
    """Diff, merge and chunk; returns the chunk numbers to map delivery over (none on a dry run)."""
    from include.audiences_to_braze.planning import plan_changes as plan

    with fail_fast_on_permanent_errors():
        cfg = _frozen(config)
        result = plan(state_store(cfg), _run_key(context), list(scans), _plan_options(cfg, context["params"]))
    if result["dry_run"]:
        log.info("Dry run: planned payloads written to %s; nothing is sent or committed", result["payload_file"])
        return []
    return list(range(result["chunks"]))


def deliver_chunk(chunk: int, config: dict, context) -> dict:
    from braze_lytics.hooks.braze import BrazeHook
    from include.audiences_to_braze.delivery import deliver_chunk as deliver
    from include.common.rate_limit import RateLimiter

    context["chunk_label"] = f"chunk {chunk}"
    with fail_fast_on_permanent_errors():
        cfg = _frozen(config)
        # The workspace budget is shared by the pool's parallel deliveries.
        budget = max(1, cfg.rate_limit_requests // cfg.delivery_concurrency)
        limiter = RateLimiter(budget, cfg.rate_limit_seconds)
        client = BrazeHook(cfg.braze_conn_id).get_track_client(limiter, batch_limit=cfg.batch_size)
        progress = deliver(state_store(cfg), _run_key(context), chunk, client.track,
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
        plan = store.read_json(run_files.plan_key(run_key))
        scans = [store.read_json(run_files.scan_marker(run_key, slug)) for slug in plan["audiences"]]
        return commit_run(store, run_key, plan, scans)


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
    summary = run_report(store, run_key, store.read_json(plan_key))
    lines = ["| audience | members | adds | removes | skipped (no id) | requests | retries | dead-lettered | data points |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for slug, a in summary["audiences"].items():
        lines.append(f"| {slug} | {a['members']:,} | {a['adds']:,} | {a['removes']:,} | {a['skipped_no_id']:,} | "
                     f"{a['requests']:,} | {a['retries']:,} | {a['dead_lettered']:,} | {a['estimated_data_points']:,} |")
    log.info("Run summary%s:\n%s", " (dry run)" if summary["dry_run"] else "", "\n".join(lines))
    if not summary["dry_run"] and not store.exists(run_files.committed_marker(run_key)):
        raise AirflowFailException("this run was not committed (a delivery failed): the next run re-sends its "
                                   "changes; clear the failed deliver_chunk tasks to finish this one")
    return summary
