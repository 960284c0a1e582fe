"""The failure message: what failed, where, how, and a link to its log - as Slack-compatible JSON.

Pure functions over the callback's context (no I/O), so the payload can be checked without a
webhook. The error text is redacted by Airflow's secrets masker (every connection password and
extra a task fetched is registered there) *before* it is cut, so a secret can never survive half
masked at the cut.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

MAX_ERROR_CHARS = 1500  # Slack section text takes 3,000; the end of a message often says what to do
ERROR_TAIL_CHARS = 400
DEFAULT_BASE_URL = "http://localhost:8080/"  # Airflow's own fallback for [api] base_url
NO_EXCEPTION = ("no exception reached the callback: the task was failed outside its own process "
                "(heartbeat timeout, killed worker, or marked failed by hand); see the log")


@dataclass(frozen=True)
class FailedTask:
    """The facts a failure notification names (all plain strings/ints; nothing secret)."""

    dag_id: str
    task_id: str
    run_id: str
    map_index: int = -1
    map_label: str | None = None  # rendered map index: the segment/audience/chunk name
    try_number: int | None = None
    logical_date: str | None = None
    error: str = NO_EXCEPTION

    @property
    def task_display(self) -> str:
        """`task_id`, or `task_id [label]` / `task_id [#N]` for a mapped task instance."""
        if self.map_index is None or self.map_index < 0:
            return self.task_id
        if self.map_label and self.map_label != str(self.map_index):
            return f"{self.task_id} [{self.map_label}]"
        return f"{self.task_id} [#{self.map_index}]"


def failed_task_from_context(context: Any) -> FailedTask:
    """The failed task instance as named in an `on_failure_callback` context (worker or DAG processor)."""
    ti = context.get("ti") or context.get("task_instance")
    dag = context.get("dag")
    dag_run = context.get("dag_run")
    dag_id = _first(getattr(ti, "dag_id", None), getattr(dag, "dag_id", None), default="?")
    task_id = _first(getattr(ti, "task_id", None), default="(DAG run)")
    run_id = _first(getattr(ti, "run_id", None), context.get("run_id"), getattr(dag_run, "run_id", None), default="?")
    map_index = getattr(ti, "map_index", None)
    logical_date = context.get("logical_date") or getattr(dag_run, "logical_date", None)
    return FailedTask(
        dag_id=str(dag_id),
        task_id=str(task_id),
        run_id=str(run_id),
        map_index=map_index if isinstance(map_index, int) else -1,
        map_label=(getattr(ti, "rendered_map_index", None) or None),
        try_number=getattr(ti, "try_number", None),
        logical_date=logical_date.isoformat() if hasattr(logical_date, "isoformat") else None,
        error=error_text(context.get("exception") if "exception" in context else context.get("reason")),
    )


def error_text(exc: BaseException | str | None, redact=None) -> str:
    """`ExceptionType: message` (`Type (CauseType): message` for a chained error), redacted, then cut
    to `MAX_ERROR_CHARS` (head and tail kept)."""
    if exc is None or exc == "":
        text = NO_EXCEPTION
    elif isinstance(exc, BaseException):
        kind, message, cause = type(exc).__name__, str(exc).strip(), exc.__cause__
        if cause is not None:  # e.g. AirflowFailException from the core's typed error: name both
            kind = f"{kind} ({type(cause).__name__})"
            message = message or str(cause).strip()
        text = f"{kind}: {message}" if message else kind
    else:
        text = str(exc)
    if redact is None:
        from airflow.sdk.log import redact
    text = str(redact(text))  # before cutting: a cut secret would no longer match its mask
    return cut(text, MAX_ERROR_CHARS)


def cut(text: str, limit: int, tail: int = ERROR_TAIL_CHARS) -> str:
    """`text` within `limit` characters: its start and its last `tail` characters, the middle elided."""
    if len(text) <= limit:
        return text
    tail = min(tail, limit // 3)
    marker = ""
    for _ in range(4):  # the marker's length depends on the count it names: settles in 2-3 rounds
        head = max(0, limit - tail - len(marker))
        new_marker = f" […{len(text) - head - tail:,} characters cut…] "
        if new_marker == marker:
            break
        marker = new_marker
    head = max(0, limit - tail - len(marker))
    return text[:head] + marker + text[len(text) - tail:]


def log_url(base_url: str | None, task: FailedTask) -> str:
    """The task instance's log in the Airflow 3 UI.

    The UI's route (airflow/ui, the task instance page whose index tab is "Logs") is
    ``/dags/{dag_id}/runs/{run_id}/tasks/{task_id}[/mapped/{map_index}]`` with ``?try_number=N``
    selecting the try - the same URL as Airflow's own ``TaskInstance.log_url``.
    """
    base = (base_url or DEFAULT_BASE_URL).rstrip("/")
    path = f"/dags/{quote(task.dag_id, safe='')}/runs/{quote(task.run_id, safe='')}"
    if task.task_id == "(DAG run)":
        return base + path
    path += f"/tasks/{quote(task.task_id, safe='')}"
    if task.map_index is not None and task.map_index >= 0:
        path += f"/mapped/{task.map_index}"
    if task.try_number:
        path += f"?try_number={task.try_number}"
    return base + path


def _mrkdwn(text: str) -> str:
    """Text safe inside Slack mrkdwn: `&`, `<`, `>` escaped (Slack's rule), no code fence breakout."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("```", "'''")


def slack_payload(task: FailedTask, url: str) -> dict:
    """`{"text": ..., "blocks": [...]}` - Block Kit for Slack, with `text` as the notification/fallback."""
    what = f"{task.dag_id}.{task.task_display}"
    text = (f":red_circle: Airflow task failed: {_mrkdwn(what)} (run {_mrkdwn(task.run_id)}"
            f"{f', try {task.try_number}' if task.try_number else ''}): "
            f"{_mrkdwn(cut(task.error.splitlines()[0] if task.error else '', 300, 100))} - <{url}|open the log>")
    fields = [
        ("DAG", task.dag_id),
        ("Task", task.task_id),
        ("Mapped", (f"{task.map_label} (map index {task.map_index})" if task.map_label
                    else f"map index {task.map_index}") if task.map_index >= 0 else None),
        ("Run", task.run_id),
        ("Logical date", task.logical_date),
        ("Try", str(task.try_number) if task.try_number else None),
    ]
    return {
        "text": text,
        "blocks": [
            {"type": "header",
             "text": {"type": "plain_text", "text": cut(f"Airflow task failed: {what}", 150, 40), "emoji": True}},
            {"type": "section",
             "fields": [{"type": "mrkdwn", "text": f"*{name}*\n{_mrkdwn(value)}"}
                        for name, value in fields if value]},
            {"type": "section",
             "text": {"type": "mrkdwn", "text": f"*Error*\n```{cut(_mrkdwn(task.error), 2900)}```"}},
            {"type": "section",
             "text": {"type": "mrkdwn", "text": f"<{url}|View the log of this try>"}},
        ],
    }


def _first(*values: Any, default: Any) -> Any:
    return next((v for v in values if v not in (None, "")), default)
