"""The run report page: self-contained server-rendered HTML (no script, no external asset).

Every value is escaped. Links are relative to the page's own URL
(`.../dags/<dag_id>/runs/<run_id>`), so they work whatever prefix the API server is served under.
Rows and cells carry `data-*` attributes (`data-audience`, `data-segment`, `data-total`,
`data-key`) naming the figure they show.
"""

from __future__ import annotations

from datetime import datetime
from html import escape
from urllib.parse import quote

CSS = """
:root { color-scheme: light dark; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; }
body { margin: 16px 20px; }
h1 { font-size: 18px; margin: 0 0 4px; } h2 { font-size: 15px; margin: 22px 0 6px; }
table { border-collapse: collapse; margin: 6px 0 10px; }
th, td { border: 1px solid #8885; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #8881; font-weight: 600; }
.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.meta { color: #888; margin: 0 0 12px; }
.badge { border-radius: 9px; padding: 0 8px; font-weight: 600; white-space: nowrap; }
.ok, .success { background: #2e7d3230; } .failed, .upstream_failed, .tripped { background: #c6282830; }
.running, .queued, .scheduled, .deferred, .up_for_reschedule, .up_for_retry { background: #1565c030; }
.awaiting_input { background: #ef6c0030; } .skipped, .none { background: #8882; }
.note { padding: 6px 10px; margin: 6px 0; border-left: 4px solid #1565c0; background: #1565c010; }
.note.warn { border-color: #ef6c00; background: #ef6c0014; }
.note.error { border-color: #c62828; background: #c6282814; }
code { font-size: 12px; word-break: break-all; }
ul { margin: 4px 0; padding-left: 20px; }
"""


def e(value) -> str:
    return escape("" if value is None else str(value))


def n(value) -> str:
    """A count with thousands separators; '-' for none."""
    if value is None or value == "":
        return "-"
    try:
        return f"{int(value):,}"
    except (TypeError, ValueError):
        return e(value)


def when(value) -> str:
    if isinstance(value, datetime):
        return e(value.strftime("%Y-%m-%d %H:%M:%S %Z").strip())
    return e(value) if value else "-"


def badge(state) -> str:
    state = state or "none"
    css = "".join(c if c.isalnum() or c == "_" else "_" for c in str(state))
    return f'<span class="badge {css}">{e(state)}</span>'


def pct(share) -> str:
    return "-" if share is None else f"{share * 100:.1f}%".replace(".0%", "%")


def page(title: str, body: str) -> str:
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{e(title)}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<style>{CSS}</style></head><body>{body}</body></html>")


def notes(items) -> str:
    return "".join(f'<div class="note {e(level)}">{e(text)}</div>' for level, text in items)


def file_link(run_id: str, path: str) -> str:
    """A link from the run's page (…/runs/<run_id>) to …/runs/<run_id>/<path>."""
    return f"./{quote(run_id, safe='')}/{path}"


def header(run: dict, title: str) -> str:
    meta = [f"run {badge(run['state'])} <code>{e(run['run_id'])}</code>", f"type {e(run['run_type'])}",
            f"logical date {when(run['logical_date'] or run['run_after'])}",
            f"started {when(run['start_date'])}", f"ended {when(run['end_date'])}"]
    return f"<h1>{e(title)}</h1><p class=\"meta\">{' · '.join(meta)}</p>"


# -------------------------------------------------------------------------------------- pages
def render(view: dict) -> str:
    if view["kind"] == "segments":
        return page(f"Run report - {view['run']['run_id']}", segments_body(view))
    if view["kind"] == "audiences":
        return page(f"Run report - {view['run']['run_id']}", audiences_body(view))
    run = view["run"]
    return page("Run report", header(run, f"{run['dag_id']}: no run report")
                + notes([("info", "The run report covers the Braze ↔ Lytics DAGs (braze_segments_to_lytics, "
                                  "lytics_audiences_to_braze) only.")]))


def message_page(status: int, text: str) -> str:
    hint = {401: " Log in to Airflow again (reload the Airflow UI), then reopen this tab.",
            403: " Your Airflow account may not read this DAG's runs."}.get(status, "")
    return page(f"Run report - {status}", f"<h1>Run report unavailable</h1>"
                                          f"{notes([('error', f'{status}: {text}.{hint}')])}")


def segments_body(view: dict) -> str:
    run = view["run"]
    parts = [header(run, "braze_segments_to_lytics - run report"), notes(view["notes"])]
    summary, totals = view["summary"], view["totals"]
    parts.append("<h2>Totals</h2><table>")
    if summary:
        parts.append(f'<tr data-total="segments"><th>segments</th><td class="num" data-key="segments">'
                     f'{n(summary.get("segments"))}</td></tr>'
                     f'<tr data-total="delivered"><th>delivered</th><td data-key="delivered">'
                     f'{e(", ".join(summary.get("delivered") or [])) or "-"}</td></tr>'
                     f'<tr data-total="failed"><th>failed</th><td data-key="failed">'
                     f'{e(", ".join(summary.get("failed") or [])) or "-"}</td></tr>')
        totals = {k: summary.get(k) for k in totals}
    labels = {"rows_read": "rows read", "rows_written": "rows written", "rows_quarantined": "rows quarantined",
              "bytes": "bytes delivered"}
    for key, value in totals.items():
        parts.append(f'<tr data-total="{e(key)}"><th>{e(labels.get(key, key))}</th>'
                     f'<td class="num" data-key="{e(key)}">{n(value)}</td></tr>')
    parts.append("</table>")

    parts.append("<h2>Segments</h2>")
    if not view["rows"]:
        parts.append("<p>No segment planned.</p>")
        return "".join(parts)
    parts.append("<table><tr><th>segment</th><th>transfer</th><th class=num>rows read</th><th class=num>written</th>"
                 "<th class=num>quarantined</th><th class=num>bytes</th><th>remote path</th><th>sha256</th>"
                 "<th>rejected rows</th></tr>")
    for row in view["rows"]:
        r = row["report"] or {}
        if row["quarantine"]:
            link = (f'<a href="{e(file_link(run["run_id"], "quarantine/" + quote(row["name"], safe="")))}" '
                    f'download>quarantine CSV</a>')
        elif row["quarantined_not_here"]:
            link = f"not on this server ({e(r.get('quarantine_file'))})"
        else:
            link = "-"
        parts.append(
            f'<tr data-segment="{e(row["name"])}"><td>{e(row["name"])}</td><td>{badge(row["state"])}</td>'
            f'<td class="num" data-key="rows_read">{n(r.get("rows_read"))}</td>'
            f'<td class="num" data-key="rows_written">{n(r.get("rows_written"))}</td>'
            f'<td class="num" data-key="rows_quarantined">{n(r.get("rows_quarantined"))}</td>'
            f'<td class="num" data-key="bytes">{n(r.get("bytes"))}</td>'
            f'<td data-key="remote_path"><code>{e(r.get("remote_path")) or "-"}</code></td>'
            f'<td data-key="sha256"><code>{e(r.get("sha256")) or "-"}</code></td>'
            f'<td data-key="quarantine">{link}</td></tr>')
    parts.append("</table><p class=\"meta\">Quarantined = rows rejected (no id, broken line, too long) plus duplicate "
                 "ids; each one is in the segment's quarantine CSV with its reason. A failed segment delivered "
                 "nothing; its quarantine CSV, if any, lists the rows that made it fail.</p>")
    return "".join(parts)


AUDIENCE_COLUMNS = (("members", "members"), ("adds", "adds"), ("removes", "removes"),
                    ("skipped_no_id", "skipped (no id)"), ("invalid_ids", "invalid ids"), ("requests", "requests"),
                    ("retries", "retries"), ("dead_lettered", "dead-lettered"),
                    ("estimated_data_points", "data points"))
RUN_TOTALS = (("users_changed", "users changed"), ("chunks", "chunks"), ("requests", "requests"),
              ("retries", "retries"), ("dead_lettered", "dead-lettered"), ("parked", "parked"),
              ("estimated_data_points", "data points (estimated)"))


def audiences_body(view: dict) -> str:
    run, report = view["run"], view["report"]
    parts = [header(run, "lytics_audiences_to_braze - run report"), notes(view["notes"])]
    if view["error"]:
        parts.append(notes([("error", view["error"])]))
    if report is None:
        if view["scans"]:
            parts.append("<h2>Audiences being scanned</h2><table><tr><th>audience</th><th>snapshot_audience</th></tr>")
            for scan in view["scans"]:
                name = f"{scan['slug']} (retire)" if scan["retire"] else scan["slug"]
                parts.append(f'<tr data-audience="{e(scan["slug"])}"><td>{e(name)}</td><td>{badge(scan["state"])}</td></tr>')
            parts.append("</table>")
        return "".join(parts)

    source = ("the report task's result" if view["source"] == "report"
              else "the state store (the run's plan and its deliveries so far)")
    parts.append(f"<h2>Run{' (dry run)' if report.get('dry_run') else ''}</h2><table>")
    for key, label in RUN_TOTALS:
        parts.append(f'<tr data-total="{key}"><th>{e(label)}</th><td class="num" data-key="{key}">'
                     f'{n(report.get(key))}</td></tr>')
    if report.get("retired"):
        parts.append(f'<tr data-total="retired"><th>retired</th><td data-key="retired">'
                     f'{e(", ".join(map(str, report["retired"])))}</td></tr>')
    parts.append(f"</table><p class=\"meta\">From {e(source)}.</p>")

    parts.append("<h2>Audiences</h2><table><tr><th>audience</th>"
                 + "".join(f"<th class=num>{e(label)}</th>" for _, label in AUDIENCE_COLUMNS) + "<th>guard</th></tr>")
    for slug, a in (report.get("audiences") or {}).items():
        checked = a.get("guard")
        flag = badge("-") if checked is None else (badge("tripped") if checked.get("tripped") else badge("ok"))
        name = f"{slug} (retired)" if a.get("retire") else slug
        parts.append(f'<tr data-audience="{e(slug)}"><td>{e(name)}</td>'
                     + "".join(f'<td class="num" data-key="{key}">{n(a.get(key, 0 if key == "invalid_ids" else None))}</td>'
                               for key, _ in AUDIENCE_COLUMNS)
                     + f'<td data-key="guard">{flag}</td></tr>')
    parts.append("</table>")
    parts.append(guard_section(report, view))
    parts.append(parked_section(report))
    unconfigured = report.get("unconfigured_audiences") or []
    if unconfigured:
        parts.append("<h2>No longer configured</h2>" + notes([("warn", (
            f"{', '.join(map(str, unconfigured))}: synced before but no longer in the pipeline file; the slug stays "
            f"on every Braze profile it was delivered to. List them under 'retire:' (or trigger a run with the "
            f"'retire' param) to remove it, or put them back."))]))
    parts.append(files_section(run["run_id"], view["files"]))
    return "".join(parts)


def guard_section(report: dict, view: dict) -> str:
    verdict = report.get("guard")
    if not verdict:
        return "<h2>Guard</h2><p>No guard verdict in this run's plan.</p>"
    status = badge("tripped") if verdict.get("tripped") else badge("ok")
    parts = [f'<h2>Guard</h2><p data-key="guard">{status} approval: <b data-key="approval">{e(verdict.get("approval"))}</b>']
    if verdict.get("tripped"):
        parts.append(f" - tripped for {e(', '.join(verdict.get('tripped_audiences') or []))}")
    parts.append("</p>")
    answer = view.get("answer")
    if answer and answer.get("chosen_options"):
        who = (answer.get("responded_by_user") or {}).get("name") or "?"
        parts.append(f"<p>Answer: <b>{e(', '.join(map(str, answer['chosen_options'])))}</b> by {e(who)} "
                     f"at {when(answer.get('responded_at'))}</p>")
    elif view.get("approval_state"):
        parts.append(f"<p>approve_changes: {badge(view['approval_state'])}</p>")
    audiences = report.get("audiences") or {}
    for slug in verdict.get("tripped_audiences") or []:
        g = (audiences.get(slug) or {}).get("guard") or {}
        parts.append(f'<h3 data-tripped="{e(slug)}">{e(slug)}</h3><table>'
                     f"<tr><th>members before</th><td class=num>{n(g.get('members_before'))}</td></tr>"
                     f"<tr><th>members after</th><td class=num>{n(g.get('members_after'))}</td></tr>"
                     f"<tr><th>members read</th><td class=num>{n(g.get('members_read'))}</td></tr>"
                     f"<tr><th>Lytics total</th><td class=num>{n(g.get('lytics_total'))}</td></tr>"
                     f"<tr><th>adds / removes</th><td class=num>{n(g.get('adds'))} / {n(g.get('removes'))}</td></tr>"
                     f"<tr><th>missing ids</th><td class=num>{n(g.get('missing_ids'))} "
                     f"({pct(g.get('missing_id_share'))})</td></tr></table><ul>"
                     + "".join(f"<li data-key=\"reason\">{e(reason)}</li>" for reason in g.get("reasons") or [])
                     + "</ul>")
        if g.get("sample_removed"):
            parts.append("<p>Would be removed, e.g.: " + ", ".join(f"<code>{e(i)}</code>" for i in g["sample_removed"])
                         + "</p>")
    limits = verdict.get("limits") or {}
    if limits:
        parts.append(f"<p class=\"meta\">Limits: max_remove_share {pct(limits.get('max_remove_share'))}, "
                     f"max_missing_id_share {pct(limits.get('max_missing_id_share'))}, scan tolerance "
                     f"max({pct(limits.get('scan_total_tolerance_share'))} of the total, "
                     f"{n(limits.get('scan_total_tolerance_members'))} members).</p>")
    return "".join(parts)


def parked_section(report: dict) -> str:
    if not report.get("parked"):
        return ""
    rows = "".join(f"<tr><td><code>{e(p.get('external_id'))}</code></td><td>{e(p.get('error'))}</td></tr>"
                   for p in report.get("parked_sample") or [])
    return (f"<h2>Parked users</h2><p>{n(report['parked'])} user(s) rejected by Braze in too many runs in a row are "
            f"no longer sent (fix the profile or id, then delete the parked file and run a full_resync). "
            f"Sample:</p><table><tr><th>external_id</th><th>Braze's error</th></tr>{rows}</table>")


def files_section(run_id: str, found: list[tuple[str, str]]) -> str:
    if not found:
        return "<h2>Files</h2><p>No file of this run in the state store.</p>"
    items = "".join(f'<li><a href="{e(file_link(run_id, "files/" + name))}" data-file="{e(name)}" download>'
                    f"{e(name)}</a> - {e(label)}</li>" for name, label in found)
    return f"<h2>Files</h2><ul>{items}</ul>"
