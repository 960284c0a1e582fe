"""The manual-trigger forms: params with titles, help texts and the configured names to pick from.

Segments and audiences are chosen from the names in the pipeline file (a multi-select in the
trigger form; the form and the API reject a name that is not configured), not typed. The names
are read when the DAG file is parsed: a few KB of YAML, no network. A pipeline file that cannot be
read does not make the DAG vanish: the picker then takes free text, its help text says why, and
the run's first task fails with the full error.

A manual run from the form must not start scheduled runs as a side effect. Airflow runs a
triggered run only while its DAG is unpaused, and unpausing (the form's "Unpause ... on trigger"
checkbox) also starts the DAG's schedule. So: the DAGs are created paused; where only one-off
runs are wanted (a first dry run, a test deployment), the schedule is set to `none` through its
environment variable (or Airflow's `[scheduler] use_job_schedule = False`), and then unpausing
runs what is triggered and nothing else. Every form says so (`ONE_OFF_NOTE`).
"""

from __future__ import annotations

import logging

from airflow.sdk import Param

log = logging.getLogger(__name__)

ONE_OFF_NOTE = ("Runs start only while the DAG is unpaused, and unpausing also starts its schedule. For one-off "
                "runs only (a dry run, a test), deploy it with its schedule set to `none` "
                "(`LYTICS_AUDIENCES_TO_BRAZE_SCHEDULE` / `BRAZE_SEGMENTS_TO_LYTICS_SCHEDULE`) or "
                "`AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE=False`; the DAGs are created paused.")


def configured_names(section: str) -> tuple[tuple[str, ...], str | None]:
    """(names, None) from the pipeline file's `segments:` or `lytics_to_braze.audiences:`; ((), why) when unreadable.

    Only the names are read (no validation, no heavy import: this runs at every parse, so an edit
    of the file shows in the form after the next parse); the run's first task validates the whole
    file.
    """
    from include.common.config_file import read_yaml

    try:
        path, raw = read_yaml()
        if section == "segments":
            entries = raw.get("segments") if isinstance(raw, dict) else None
            names = [e.get("name") for e in entries or [] if isinstance(e, dict)]
        else:
            sync = raw.get("lytics_to_braze") if isinstance(raw, dict) else None
            entries = sync.get("audiences") if isinstance(sync, dict) else None
            names = [e if isinstance(e, str) else e.get("slug") for e in entries or [] if isinstance(e, str | dict)]
        names = [n for n in names if isinstance(n, str) and n]
        if not names:
            return (), f"no {section} found in {path}"
        return tuple(dict.fromkeys(names)), None
    except Exception as exc:  # noqa: BLE001 - a form without a picker beats a DAG that vanishes
        why = str(exc).splitlines()[0][:300]
        log.warning("Trigger form: the %s could not be read from the pipeline file (%s); the picker takes free text",
                    section, why)
        return (), why


def names_param(section: str, *, title: str, what: str) -> Param:
    """A multi-select of the configured names (empty = all of them); its help text carries `ONE_OFF_NOTE`."""
    names, why = configured_names(section)
    items: dict = {"type": "string"}
    description = f"{what} to run; leave empty for all of them. {ONE_OFF_NOTE}"
    if names:
        items["enum"] = list(names)
        return Param([], type="array", items=items, examples=list(names), title=title, description=description,
                     uniqueItems=True)
    description += f" (The configured names could not be read: {why}. Type the names.)"
    return Param([], type="array", items=items, title=title, description=description, uniqueItems=True)


def flag(title: str, description: str, default: bool = False) -> Param:
    return Param(default, type="boolean", title=title, description=description)


def refuse_unknown_conf(context) -> None:
    """Fail the run's first task when its conf holds a key that is not one of the DAG's params.

    Airflow accepts any extra key in a run's conf and ignores it, so `{"dryrun": true}` would
    start a real run that sends. This names the key and the close matches before anything is done.
    """
    import difflib

    from include.common.errors import ConfigError

    conf = getattr(context.get("dag_run"), "conf", None) or {}
    known = sorted(context["dag"].params.keys())
    unknown = sorted(str(key) for key in conf if key not in known)
    if not unknown:
        return
    hints = []
    for key in unknown:
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
        hints.append(f"{key!r} (did you mean {close[0]!r}?)" if close else repr(key))
    raise ConfigError(f"this run's conf has {'keys' if len(unknown) > 1 else 'a key'} that "
                      f"{context['dag'].dag_id} does not know: {', '.join(hints)}; known params: {known}. "
                      "Nothing was done: trigger the run again with the right names")
