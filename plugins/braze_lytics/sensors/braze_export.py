"""BrazeExportSensor: wait for a segment's export file without holding a worker slot.

Runs in reschedule mode: each poke is a short task try, and between pokes the slot is free
(Braze exports of large segments take minutes to an hour - docs/vendor-contracts.md#braze-segment-exports). The poll interval
and the time limit come from the segment's configuration, carried in the `export` dict that
`start_export` returned.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseSensorOperator
from airflow.sdk.exceptions import AirflowFailException, AirflowSensorTimeout

from braze_lytics.failures import fail_fast_on_permanent_errors


class BrazeExportSensor(BaseSensorOperator):
    """Succeeds once the export started by `start_export` can be downloaded.

    :param export: the dict returned by ``start_export`` (templated): for ``kind: api`` the
        sealed download link, for ``kind: drop`` the landing directory and file pattern;
        plus ``poll_interval_seconds`` and ``timeout_seconds``.
    """

    template_fields = ("export",)

    def __init__(self, *, export: Any, **kwargs: Any) -> None:
        kwargs.setdefault("mode", "reschedule")
        kwargs.setdefault("timeout", 24 * 3600)  # replaced per segment at the first poke
        super().__init__(**kwargs)
        self.export = export

    def poke(self, context) -> bool:
        from braze_lytics.tasks.segments_to_lytics import export_is_ready

        export = self.export
        context["segment_label"] = export["segment"]
        # Per-segment settings, applied before BaseSensorOperator computes timeout/reschedule.
        self.poke_interval = float(export["poll_interval_seconds"])
        self.timeout = float(export["timeout_seconds"])
        with fail_fast_on_permanent_errors():
            return export_is_ready(export)

    def execute(self, context) -> Any:
        try:
            return super().execute(context)
        except AirflowSensorTimeout:
            export = self.export
            what = ("Braze has not finished the export" if export["kind"] == "api"
                    else f"no file matching {export['pattern']!r} landed in {export['directory']!r}")
            raise AirflowFailException(
                f"segment {export['segment']!r}: {what} within {_duration(self.timeout)} "
                f"(export_timeout_minutes). Large segments can take an hour: raise export_timeout_minutes, "
                f"then clear this segment's tasks from start_export on to request a fresh export."
            ) from None


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} seconds" if seconds < 120 else f"{seconds / 60:.0f} minutes"
