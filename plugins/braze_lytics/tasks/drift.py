"""Task bodies of `lytics_audiences_drift_check`: Airflow context and Connections in, core calls out.

    plan_check   -> include.audiences_to_braze.config (read once: the check's frozen configuration,
                    the audiences to check, and whether to repair)
    check_drift  -> hooks.braze (/users/export/ids) -> include.audiences_to_braze.drift.check_drift

It reads the same pipeline file (`lytics_to_braze:`) and the same state store as
`lytics_audiences_to_braze` (`tasks.audiences_to_braze.state_store`): the committed snapshots it
samples are the sync's, and its repair file is picked up by the sync's next plan.
"""

from __future__ import annotations

import logging

from braze_lytics.failures import fail_fast_on_permanent_errors

log = logging.getLogger(__name__)


def plan_check(params: dict, context) -> dict:
    """Read and validate the configuration once; what `check_drift` needs (XCom)."""
    from braze_lytics.trigger_forms import refuse_unknown_conf
    from include.audiences_to_braze.config import load_audience_config

    with fail_fast_on_permanent_errors():
        refuse_unknown_conf(context)
        config = load_audience_config()
        audiences = config.select(params.get("audiences") or [])
    repair = params.get("repair")
    repair = config.drift_repair if repair is None else bool(repair)
    log.info("Configuration %s. Audiences to check: %s; repair: %s%s", config.path, [a.slug for a in audiences],
             repair, "" if params.get("repair") is None else " (run param)")
    return {"config": config.to_dict(), "audiences": [a.slug for a in audiences], "repair": repair}


def check_drift(plan: dict, context) -> dict:
    """Sample, read back from Braze, compare; queue repairs when asked. Returns the report."""
    from braze_lytics.hooks.braze import BrazeHook
    from braze_lytics.tasks.audiences_to_braze import state_store
    from include.audiences_to_braze.config import AudienceSyncConfig
    from include.audiences_to_braze.drift import DriftOptions
    from include.audiences_to_braze.drift import check_drift as check
    from include.audiences_to_braze.run_files import run_key_for

    with fail_fast_on_permanent_errors():
        cfg = AudienceSyncConfig.from_dict(plan["config"])
        options = DriftOptions.from_config(cfg, repair=plan["repair"])
        client = BrazeHook(cfg.braze_conn_id).get_export_ids_client(cfg.drift_rate_limit_per_minute)
        report = check(state_store(cfg), run_key_for(context["run_id"]), list(plan["audiences"]),
                       lambda ids: client.custom_attribute(ids, cfg.attribute), options)
    log.info("Drift check of %s:\n%s", cfg.attribute, describe(report))
    if report["drifted"]:
        log.warning("%d of %d user(s) checked are out of step with what the sync last delivered (rate %.2f%%); "
                    "repair: %s", report["drifted"], report["checked"], 100 * report["drift_rate"],
                    report["repair_file"] or ("off" if not report["repair"] else "nothing queued"))
    return report


def describe(report: dict) -> str:
    """The report as a Markdown table, then the examples (for the task log)."""
    lines = ["| audience | sampled (members + removed) | checked | not in Braze | drifted | missing slug "
             "| unexpected slug | drift rate | repair |", "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    notes = []
    for slug, a in report["audiences"].items():
        if a["status"] != "checked":
            lines.append(f"| {slug} | - | - | - | - | - | - | - | {a['status']} |")
            continue
        rate = "-" if a["drift_rate"] is None else f"{100 * a['drift_rate']:.2f}%"
        lines.append(f"| {slug} | {a['sampled']:,} ({a['sampled_members']:,} + {a['sampled_removed']:,}) | "
                     f"{a['checked']:,} | {a['not_found']:,} | {a['drifted']:,} | {a['missing_slug']:,} | "
                     f"{a['unexpected_slug']:,} | {rate} | {a.get('repair', '-')} |")
        for e in a["examples"]:
            notes.append(f"- {slug}: {e['external_id']!r} expected {e['expected']}, Braze holds {e['found']}")
        if a["not_found_examples"]:
            notes.append(f"- {slug}: not in Braze, e.g. {a['not_found_examples']}")
    rate = "-" if report["drift_rate"] is None else f"{100 * report['drift_rate']:.2f}%"
    lines.append(f"| **all** | {report['sampled']:,} | {report['checked']:,} | {report['not_found']:,} | "
                 f"{report['drifted']:,} | | | {rate} | {report['repair_users']:,} queued |")
    lines.append(f"\n{report['requests']:,} request(s) to /users/export/ids, {report['retries']:,} retried.")
    return "\n".join(lines + notes)
