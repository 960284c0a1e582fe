"""What the run report shows, gathered in the API server: plain dicts for ``run_report_html``.

From the metadata DB (with the request's session): the run, its task instances' states and the
XComs of the few tasks that report (``XComModel.get_many``, values as the tasks returned them):

* ``braze_segments_to_lytics``: ``plan_segments`` (the planned segments, in map-index order),
  ``segment.transfer`` (one report per segment: rows, bytes, sha256, remote path) and
  ``summarize`` (the run's totals);
* ``lytics_audiences_to_braze``: ``plan_audiences`` (frozen configuration under key ``config``,
  audiences, ``unconfigured_audiences``), ``report`` and ``approve_changes`` (the answer; read from
  its human-in-the-loop request too, which also keeps a "Reject").

For an audience run without a report (still running, waiting for approval, or its report task
failed) the numbers come from the state store instead: the run's plan (``runs/<run_key>/plan.json``)
and its deliveries so far (``include.audiences_to_braze.commit.run_report``, which reads the
chunks' progress files). Airflow is imported inside the functions: this module is loaded by every
process that loads plugins.
"""

from __future__ import annotations

import logging
from typing import Any

from braze_lytics.ui import run_report_files as files

log = logging.getLogger(__name__)

SEGMENTS_DAG = "braze_segments_to_lytics"
AUDIENCES_DAG = "lytics_audiences_to_braze"
REPORTED_DAGS = (SEGMENTS_DAG, AUDIENCES_DAG)
RETURN = "return_value"
SEGMENT_TASKS = ("plan_segments", "segment.transfer", "summarize")
AUDIENCE_TASKS = ("plan_audiences", "report", "approve_changes")
SEGMENT_TOTALS = ("rows_read", "rows_written", "rows_quarantined", "bytes")  # as summarize sums them


# --------------------------------------------------------------------------------- metadata DB
def read_run(session, dag_id: str, run_id: str) -> dict | None:
    from airflow.models.dagrun import DagRun
    from sqlalchemy import select

    run = session.scalar(select(DagRun).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id))
    if run is None:
        return None
    return {"dag_id": run.dag_id, "run_id": run.run_id, "state": _text(run.state), "run_type": _text(run.run_type),
            "logical_date": run.logical_date, "run_after": run.run_after, "start_date": run.start_date,
            "end_date": run.end_date, "conf": run.conf if isinstance(run.conf, dict) else {}}


def read_task_states(session, dag_id: str, run_id: str) -> dict[tuple[str, int], dict]:
    """(task_id, map_index) -> {state, label}; label is the rendered map index (a segment's name)."""
    from airflow.models.taskinstance import TaskInstance as TI
    from sqlalchemy import select

    rows = session.execute(select(TI.task_id, TI.map_index, TI.state, TI.rendered_map_index)
                           .where(TI.dag_id == dag_id, TI.run_id == run_id)).all()
    return {(task_id, map_index): {"state": _text(state), "label": label}
            for task_id, map_index, state, label in rows}


def read_xcoms(session, dag_id: str, run_id: str, task_ids) -> dict[tuple[str, int, str], Any]:
    """(task_id, map_index, key) -> value, for every XCom of these tasks in the run."""
    from airflow.models.xcom import XComModel

    query = XComModel.get_many(run_id=run_id, dag_ids=dag_id, task_ids=list(task_ids))
    return {(x.task_id, x.map_index, x.key): XComModel.deserialize_value(x) for x in session.scalars(query)}


def read_answer(session, dag_id: str, run_id: str, task_id: str) -> dict | None:
    """The answer given to a human-in-the-loop task of the run (Approve or Reject), from its request."""
    from airflow.models.hitl import HITLDetail
    from airflow.models.taskinstance import TaskInstance as TI
    from sqlalchemy import select

    row = session.execute(select(HITLDetail.chosen_options, HITLDetail.responded_by, HITLDetail.responded_at)
                          .join(TI, TI.id == HITLDetail.ti_id)
                          .where(TI.dag_id == dag_id, TI.run_id == run_id, TI.task_id == task_id)).first()
    if row is None or row.responded_at is None:
        return None
    return {"chosen_options": list(row.chosen_options or []), "responded_at": row.responded_at,
            "responded_by_user": {"name": (row.responded_by or {}).get("name")}}


def _text(value) -> str | None:
    return None if value is None else str(getattr(value, "value", value))


def _value(xcoms: dict, task_id: str, map_index: int = -1, key: str = RETURN):
    return xcoms.get((task_id, map_index, key))


def _state(states: dict, task_id: str, map_index: int = -1) -> str | None:
    return (states.get((task_id, map_index)) or {}).get("state")


# ------------------------------------------------------------------------------------------ page
def run_page(session, dag_id: str, run_id: str, quarantine_dir=None) -> dict | None:
    """Everything the page of one run shows; None when the run does not exist."""
    run = read_run(session, dag_id, run_id)
    if run is None:
        return None
    if dag_id not in REPORTED_DAGS:
        return {"kind": "other", "run": run}
    states = read_task_states(session, dag_id, run_id)
    if dag_id == SEGMENTS_DAG:
        if quarantine_dir is None:  # a local directory or the BRAZE_LYTICS_QUARANTINE_URL store
            quarantine_dir = files.quarantine_place()
        return segments_view(run, states, read_xcoms(session, dag_id, run_id, SEGMENT_TASKS), quarantine_dir)
    return audiences_view(run, states, read_xcoms(session, dag_id, run_id, AUDIENCE_TASKS),
                          read_answer(session, dag_id, run_id, "approve_changes"))


def run_day(run: dict, report: dict | None = None) -> str | None:
    """YYYYMMDD the segment files of the run are named with: the transfer's logical date, else the run's
    logical date, else (a manual run without one) when it was due - as `run_date` in the task does."""
    day = files.ds_nodash((report or {}).get("logical_date"))
    return day or files.ds_nodash(run.get("logical_date") or run.get("run_after"))


# ----------------------------------------------------------------------------- segments -> Lytics
def planned_segments(xcoms: dict) -> list[dict]:
    planned = _value(xcoms, "plan_segments")
    return [s for s in planned if isinstance(s, dict)] if isinstance(planned, list) else []


def segments_view(run: dict, states: dict, xcoms: dict, quarantine_dir) -> dict:
    planned = planned_segments(xcoms)
    reports = {m: v for (task, m, key), v in xcoms.items()
               if task == "segment.transfer" and key == RETURN and isinstance(v, dict)}
    rows = []
    for index, segment in enumerate(planned):
        report = reports.get(index)
        name = str(segment.get("name") or (report or {}).get("segment") or f"map index {index}")
        quarantine = files.find_quarantine(quarantine_dir, segment, run_day(run, report))
        rows.append({"name": name, "state": _state(states, "segment.transfer", index), "report": report,
                     "quarantine": quarantine is not None,
                     "quarantined_not_here": bool(report and report.get("rows_quarantined")) and quarantine is None})
    for index in sorted(set(reports) - set(range(len(planned)))):  # a result without a plan entry
        rows.append({"name": str(reports[index].get("segment")), "state": _state(states, "segment.transfer", index),
                     "report": reports[index], "quarantine": False, "quarantined_not_here": False})

    summary = _value(xcoms, "summarize")
    delivered = [r["report"] for r in rows if r["report"]]
    totals = {key: sum(int(r.get(key) or 0) for r in delivered) for key in SEGMENT_TOTALS}
    notes = []
    plan_state = _state(states, "plan_segments")
    if not planned:
        notes.append(("warn", "plan_segments failed: usually the configuration file; see its log.")
                     if plan_state == "failed" else ("info", f"Not planned yet (plan_segments: {plan_state or 'not started'})."))
    if not isinstance(summary, dict):
        summary_state = _state(states, "summarize")
        if summary_state == "failed":
            failed = [r["name"] for r in rows if not r["report"]]
            notes.append(("warn", f"summarize failed: {len(failed)} of {len(rows)} segment(s) were not delivered "
                                  f"({', '.join(failed) or 'see its log'}); the others were. Open the failed "
                                  f"segment's tasks for the reason."))
        elif planned:
            notes.append(("info", f"No summary yet (summarize: {summary_state or 'not started'}); the totals "
                                  f"below add up the segments delivered so far."))
        summary = None
    return {"kind": "segments", "run": run, "rows": rows, "summary": summary, "totals": totals, "notes": notes}


def quarantine_file_of(session, dag_id: str, run_id: str, segment_name: str, quarantine_dir):
    """A function opening the quarantine file of a segment the run planned (binary), from this server's
    quarantine directory or the shared quarantine store; None if there is none."""
    run = read_run(session, dag_id, run_id)
    if run is None or dag_id != SEGMENTS_DAG:
        return None
    xcoms = read_xcoms(session, dag_id, run_id, ("plan_segments", "segment.transfer"))
    for index, segment in enumerate(planned_segments(xcoms)):
        if segment.get("name") == segment_name:
            report = _value(xcoms, "segment.transfer", index)
            return files.find_quarantine(quarantine_dir, segment, run_day(run, report if isinstance(report, dict)
                                                                               else None))
    return None


# ---------------------------------------------------------------------------- audiences -> Braze
def audience_store(session, dag_id: str, run_id: str):
    """The state store of an audience run (its frozen configuration's), or None if the run is not one."""
    if dag_id != AUDIENCES_DAG or read_run(session, dag_id, run_id) is None:
        return None
    config = _value(read_xcoms(session, dag_id, run_id, ("plan_audiences",)), "plan_audiences", key="config")
    return files.state_store(config if isinstance(config, dict) else None)


def audiences_view(run: dict, states: dict, xcoms: dict, answer: dict | None = None) -> dict:
    from include.audiences_to_braze import run_files
    from include.common.errors import BrazeLyticsError

    config = _value(xcoms, "plan_audiences", key="config")
    config = config if isinstance(config, dict) else None
    planned = _value(xcoms, "plan_audiences")
    report = _value(xcoms, "report")
    answer = answer or _value(xcoms, "approve_changes")  # a Reject fails the task: no XCom, but the request has it
    unconfigured = _value(xcoms, "plan_audiences", key="unconfigured_audiences")
    view = {"kind": "audiences", "run": run, "source": None, "report": None, "plan": None, "files": [],
            "notes": [], "error": None, "approval_state": _state(states, "approve_changes"),
            "answer": answer if isinstance(answer, dict) else None,
            "scans": [{"slug": a.get("slug"), "retire": bool(a.get("retire")),
                       "state": _state(states, "snapshot_audience", i)}
                      for i, a in enumerate(planned if isinstance(planned, list) else []) if isinstance(a, dict)]}
    notes = view["notes"]
    report_state = _state(states, "report")
    if isinstance(report, dict):
        view["source"], view["report"] = "report", report
    if config is None and view["report"] is None:
        plan_state = _state(states, "plan_audiences")
        notes.append(("warn", "plan_audiences failed: usually the configuration file; see its log.")
                     if plan_state == "failed" else ("info", f"Not planned yet (plan_audiences: {plan_state or 'not started'})."))
        return view
    try:
        store = files.state_store(config)
        run_key = run_files.run_key_for(run["run_id"])
        plan_key = run_files.plan_key(run_key)
        plan = store.read_json(plan_key) if store.exists(plan_key) else None
        view["plan"] = plan if isinstance(plan, dict) else None
        if view["report"] is None and view["plan"] is not None:
            from include.audiences_to_braze.commit import run_report

            live = run_report(store, run_key, view["plan"])
            live["guard"] = view["plan"].get("guard")
            live["unconfigured_audiences"] = unconfigured if isinstance(unconfigured, list) else []
            view["source"], view["report"] = "live", live
        view["files"] = files.existing_audience_files(store, run["run_id"])
    except (files.UnservedStore, BrazeLyticsError) as exc:
        log.warning("Run report of %s: the state store could not be read: %s", run["run_id"], exc)
        view["error"] = f"The run's state store could not be read: {exc}"

    if view["approval_state"] == "awaiting_input":
        hours = (config or {}).get("approval_timeout_hours")
        notes.append(("warn", "Waiting for approval: the guard stopped this run before anything was sent to Braze. "
                              "Approve or reject it under Required actions (or in this run's approve_changes task)"
                      + (f"; without an answer within {hours:g} h the run fails and nothing is sent."
                         if isinstance(hours, int | float) else ".")))
    if view["source"] == "live":
        if report_state == "failed":
            notes.append(("warn", "The report task failed (see its log): this run was not committed - rejected, not "
                                  "approved in time, or a delivery failed. The figures below are the plan and the "
                                  "deliveries so far, read from the state store."))
        else:
            notes.append(("info", f"No report yet (report: {report_state or 'not started'}; run: {run['state']}). "
                                  f"The figures below are the run's plan and its deliveries so far, read from the "
                                  f"state store."))
    elif view["source"] is None and view["error"] is None:
        notes.append(("warn", "This run has no plan: scanning or planning failed; see those tasks' logs.")
                     if run["state"] == "failed" or _state(states, "plan_changes") == "failed"
                     else ("info", "Not planned yet: the audiences are being scanned."))
    if view["report"] and view["report"].get("dry_run"):
        notes.append(("info", "Dry run: nothing was sent to Braze and nothing was committed."))
    return view
