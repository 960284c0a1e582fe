"""Airflow glue of Braze's export callback (core: include/segments_to_lytics/export_callback.py).

* ``start_export`` calls :func:`request_callback`: with ``callback_base_url`` set, a per-export token
  is registered in the callback store and the secret endpoint goes to Braze; only the token's
  digest (and the store's URL) go to XCom, under ``export["callback"]``.
* ``wait_for_export`` calls :func:`callback_arrived` at each poke: True once the API server's
  endpoint (``export_callback_app.py``) recorded Braze's call.

The callback store is the state store of ``BRAZE_LYTICS_STATE_URL`` (default
``$AIRFLOW_HOME/braze_lytics/state``): the API server answering Braze and the workers waiting for
the export must share it (``s3://<conn_id>@bucket/prefix`` on a multi-host deployment). Nothing
here raises because of the callback: a store that cannot be used means waiting by polling only.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def callback_store(url: str | None = None):
    """The store callback records live in: `url` (frozen in a run's XCom), else the deployment's."""
    from braze_lytics.hooks.state_store import open_state_store
    from include.common import settings

    return open_state_store(url or settings.default_state_url(), setting=settings.STATE_URL)


def request_callback(seg) -> tuple[str | None, dict | None]:
    """(endpoint for Braze, the XCom part) of a new callback; (None, None) when none is configured
    or it cannot be registered (then the export is awaited by polling only, as without it)."""
    if not seg.callback_base_url:
        return None, None
    from include.common.errors import BrazeLyticsError
    from include.segments_to_lytics.export_callback import register, short_id

    try:
        store = callback_store()
        callback = register(store, seg.callback_base_url, segment=seg.name,
                            expires_in_seconds=seg.export_timeout_minutes * 60)
    except BrazeLyticsError as exc:
        log.warning("Segment %s: could not register an export callback (%s); the export is awaited by polling "
                    "only", seg.name, exc)
        return None, None
    log.info("Segment %s: Braze will call back at %s/braze-lytics/export-callback/<secret token> (%s)",
             seg.name, seg.callback_base_url.rstrip("/"), short_id(callback.digest))
    return callback.endpoint, {"id": callback.digest, "store_url": store.url}


def callback_arrived(export: dict) -> dict | None:
    """Braze's recorded call (a small dict) if the export asked for one and it came, else None.

    Never raises for the store: a failure to look is logged and means "not yet" (the fallback
    check of the same poke still runs).
    """
    callback = export.get("callback")
    if not callback:
        return None
    from include.common.errors import BrazeLyticsError
    from include.segments_to_lytics.export_callback import received, short_id

    try:
        record = received(callback_store(callback["store_url"]), callback["id"])
    except BrazeLyticsError as exc:
        log.warning("Segment %s: could not look for Braze's export callback (%s): %s", export["segment"],
                    short_id(callback["id"]), exc)
        return None
    if record is None:
        return None
    prefix = record.get("object_prefix")
    if prefix and export.get("object_prefix") and prefix != export["object_prefix"]:
        log.warning("Segment %s: Braze's callback (%s) names object prefix %r, not this export's %r: ignored",
                    export["segment"], short_id(callback["id"]), prefix, export["object_prefix"])
        return None
    return record


def forget_callback(export: dict) -> None:
    """Drop the export's callback records once it is complete (best effort; a later call gets 404)."""
    callback = export.get("callback")
    if not callback:
        return
    from include.common.errors import BrazeLyticsError
    from include.segments_to_lytics.export_callback import forget

    try:
        forget(callback_store(callback["store_url"]), callback["id"])
    except BrazeLyticsError as exc:
        log.warning("Segment %s: could not remove the export callback's records: %s", export["segment"], exc)
