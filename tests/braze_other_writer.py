"""Another writer of the Braze array, behind the pipeline's back: what a CSV import, another
integration or a person in the dashboard does, done the way they do it - `POST /users/track` on the
(sandbox) Braze workspace, with payloads the pipeline would not send. Tests use it to introduce drift.
"""

from __future__ import annotations

import requests

SEG = "lytics_segments"


def other_writer(braze_url: str, api_key: str, changes: dict[str, dict[str, list[str]]],
                 attribute: str = SEG) -> None:
    """Apply `{external_id: {"add": [...], "remove": [...]}}` (or `{"set": [...]}`: a plain list that
    replaces the whole array) through `/users/track`, 75 objects a request; raises unless all applied."""
    objects = []
    for external_id, ops in changes.items():
        value = list(ops["set"]) if "set" in ops else {k: list(v) for k, v in ops.items() if v}
        objects.append({"external_id": external_id, attribute: value})
    with requests.Session() as session:
        for start in range(0, len(objects), 75):
            batch = objects[start:start + 75]
            resp = session.post(f"{braze_url}/users/track", json={"attributes": batch},
                                headers={"Authorization": f"Bearer {api_key}"}, timeout=30)
            assert resp.status_code == 201 and "errors" not in resp.json(), resp.text
