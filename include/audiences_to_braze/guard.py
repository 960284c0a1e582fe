"""The guard: stop a run before anything is sent when its changes look like a broken source.

A Lytics-side mistake reads, to a diff, exactly like users leaving their audiences: an `id_field`
renamed in Lytics (every member now lacks the id), a scan that ended early, an audience emptied
by an edited definition. Delivered, each one removes the audience from thousands of Braze
profiles in a green run. So after planning, and before any request to Braze, every audience of
the run is checked against three limits:

* **removes** - more than `max_remove_share` (default 10%) of the committed members would be
  removed (only when there is a committed snapshot: a first run removes nobody);
* **scan vs total** - the scan read a member count that disagrees with the `total` Lytics
  reported, beyond the scan tolerance (`max(1% of the total, 10 members)` by default). The scan
  client already refuses such a scan; this is the second line, on what the plan was made from;
* **missing ids** - more than `max_missing_id_share` (default 5%) of the members read have no
  usable `id_field` value.

The verdict, with the numbers a person needs to decide (members before/after, adds, removes,
missing ids, Lytics' total, up to 10 of the ids that would be removed), is written into the plan
(plan.json). When it trips, the DAG waits for the on-call person to approve or reject in the
Airflow UI before anything is sent; `approval_subject`/`approval_body` word that request.

Plain Python (no Airflow), like the rest of `include/`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from include.clients.lytics.scan import TOTAL_TOLERANCE_MEMBERS, TOTAL_TOLERANCE_SHARE, total_mismatch

SAMPLE_REMOVED = 10  # ids of would-be-removed users shown per audience


@dataclass(frozen=True)
class GuardLimits:
    """The thresholds of the guard (configuration keys of the same names, see config.py)."""

    max_remove_share: float = 0.10
    max_missing_id_share: float = 0.05
    scan_total_tolerance_share: float = TOTAL_TOLERANCE_SHARE
    scan_total_tolerance_members: int = TOTAL_TOLERANCE_MEMBERS

    @classmethod
    def from_config(cls, config) -> GuardLimits:
        return cls(max_remove_share=config.max_remove_share, max_missing_id_share=config.max_missing_id_share,
                   scan_total_tolerance_share=config.scan_total_tolerance_share,
                   scan_total_tolerance_members=config.scan_total_tolerance_members)


def check_audience(slug: str, *, members_before: int | None, members_after: int, members_read: int,
                   missing_ids: int, adds: int, removes: int, sample_removed: list[str],
                   total_first: int | None = None, total_last: int | None = None, id_field: str = "braze_id",
                   limits: GuardLimits | None = None, retire: bool = False) -> dict:
    """The guard's verdict on one audience's planned changes, as a JSON-able dict.

    :param members_before: members (with an id) of the committed snapshot; None on a first run.
    :param members_after: members with an id in this run's snapshot.
    :param members_read: member records the scan read (with or without an id).
    :param missing_ids: of those, members without a usable `id_field` value.
    :param sample_removed: ids that would be removed (the first `SAMPLE_REMOVED` are kept).
    :param retire: the audience is being retired (config or param `retire`): every committed member
        is removed on purpose, still subject to `max_remove_share` like any other removal.
    """
    limits = limits or GuardLimits()
    reasons: list[str] = []
    remove_share = removes / members_before if members_before else None
    if retire and remove_share is not None and remove_share > limits.max_remove_share:
        reasons.append(f"is being retired (`retire`): would remove its slug from all {removes:,} committed members "
                       f"({_pct(remove_share)}; max_remove_share is {_pct(limits.max_remove_share)})")
    elif remove_share is not None and remove_share > limits.max_remove_share:
        reasons.append(f"would remove {removes:,} of the {members_before:,} committed members ({_pct(remove_share)}; "
                       f"max_remove_share is {_pct(limits.max_remove_share)})")
    mismatch = total_mismatch(members_read, total_first, total_last, share=limits.scan_total_tolerance_share,
                              members=limits.scan_total_tolerance_members)
    if mismatch:
        reasons.append(f"the scan {mismatch}: it is probably incomplete")
    missing_share = missing_ids / members_read if members_read else 0.0
    if missing_share > limits.max_missing_id_share:
        reasons.append(f"{missing_ids:,} of {members_read:,} members read ({_pct(missing_share)}) have no "
                       f"'{id_field}' (max_missing_id_share is {_pct(limits.max_missing_id_share)}): was the field "
                       f"renamed or emptied in Lytics?")
    return {
        "slug": slug,
        "retire": retire,
        "tripped": bool(reasons),
        "reasons": reasons,
        "members_before": members_before,
        "members_after": members_after,
        "members_read": members_read,
        "lytics_total": total_last if total_last is not None else total_first,
        "adds": adds,
        "removes": removes,
        "missing_ids": missing_ids,
        "remove_share": remove_share,
        "missing_id_share": missing_share,
        "sample_removed": list(sample_removed[:SAMPLE_REMOVED]),
    }


def verdict(per_audience: dict[str, dict], limits: GuardLimits, *, allow_large_change: bool = False,
            dry_run: bool = False) -> dict:
    """The run's verdict from its audiences' ones: tripped if any audience tripped.

    `approval` says what the run does about it: "not needed", "required", or why it does not wait
    ("skipped: dry run", "skipped: allow_large_change").
    """
    tripped = sorted(slug for slug, g in per_audience.items() if g["tripped"])
    if not tripped:
        approval = "not needed"
    elif dry_run:
        approval = "skipped: dry run"
    elif allow_large_change:
        approval = "skipped: allow_large_change"
    else:
        approval = "required"
    return {"tripped": bool(tripped), "tripped_audiences": tripped, "approval": approval,
            "allow_large_change": allow_large_change, "limits": asdict(limits)}


def describe(plan: dict) -> str:
    """One line per tripped audience, for logs: `slug: reason; reason`."""
    lines = []
    for slug in plan["guard"]["tripped_audiences"]:
        lines.append(f"{slug}: " + "; ".join(plan["audiences"][slug]["guard"]["reasons"]))
    return "\n".join(lines)


def approval_subject(plan: dict) -> str:
    tripped = plan["guard"]["tripped_audiences"]
    removes = sum(plan["audiences"][s]["guard"]["removes"] for s in tripped)
    names = ", ".join(tripped[:3]) + (f" and {len(tripped) - 3} more" if len(tripped) > 3 else "")
    return (f"Lytics → Braze: unusual changes in {names} ({removes:,} removes) - approve before anything is sent")


def approval_body(plan: dict, *, timeout_hours: float, plan_path: str, id_field: str) -> str:
    """The approval request shown under "Required actions" (Markdown): the numbers and the choices."""
    guard = plan["guard"]
    rows = ["| audience | members before | members after | adds | removes | no id | Lytics total |",
            "|---|---:|---:|---:|---:|---:|---:|"]
    details = []
    for slug in guard["tripped_audiences"]:
        g = plan["audiences"][slug]["guard"]
        rows.append(f"| **{slug}** | {_n(g['members_before'])} | {g['members_after']:,} | {g['adds']:,} | "
                    f"{g['removes']:,} | {g['missing_ids']:,} | {_n(g['lytics_total'])} |")
        details.append(f"**{slug}**")
        details += [f"- {reason}" for reason in g["reasons"]]
        if g["sample_removed"]:
            sample = ", ".join(f"`{i}`" for i in g["sample_removed"])
            details.append(f"- would be removed, e.g.: {sample}")
    others = [s for s in plan["audiences"] if s not in guard["tripped_audiences"]]
    limits = guard["limits"]
    parts = [
        "The guard stopped this run **before anything was sent to Braze**:",
        "",
        *rows,
        "",
        *details,
        "",
        f"Other audiences of this run (within the limits, sent together on approval): "
        f"{', '.join(others) if others else 'none'}. In all {plan['users']:,} user(s) would be updated "
        f"(~{plan['estimated_data_points']:,} data points).",
        "",
        "**Approve** - these changes are real (e.g. an audience was redefined): send them, then commit.  ",
        "**Reject** - something is wrong on the Lytics side: nothing is sent and nothing is committed; the run "
        "fails. Fix the cause (e.g. `id_field` in the pipeline file, the audience in Lytics); the next run "
        "diffs against the same committed state and asks again if the change is still this large.  ",
        f"**No answer within {timeout_hours:g} h** (`approval_timeout_hours`): the run fails, nothing sent.",
        "",
        f"Limits: max_remove_share {_pct(limits['max_remove_share'])}, max_missing_id_share "
        f"{_pct(limits['max_missing_id_share'])}, scan tolerance max({_pct(limits['scan_total_tolerance_share'])}"
        f" of the total, {limits['scan_total_tolerance_members']} members); id field `{id_field}`. "
        f"Plan: `{plan_path}`. A manual run with `allow_large_change` does not wait.",
    ]
    return "\n".join(parts)


def _pct(share: float) -> str:
    return f"{share * 100:.1f}%".replace(".0%", "%")


def _n(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"
