"""What Braze's webhook step sends to Lytics: method, headers and the JSON body with Liquid.

The body holds exactly the fields Lytics' ``braze_users`` stream maps by default (Lytics' Braze
integration guide: "The webhook template is expected to include the following fields"), each
filled by Braze's Liquid personalisation for the user the webhook runs for:

==============  ==========================================  =====================
field sent      Braze Liquid                                Lytics user field
==============  ==========================================  =====================
city            ``{{${city} | json_escape}}``               city
country         ``{{${country} | json_escape}}``            country
first_name      ``{{${first_name} | json_escape}}``         first_name
gender          ``{{${gender} | json_escape}}``             gender
language        ``{{${language} | json_escape}}``           language
last_name       ``{{${last_name} | json_escape}}``          last_name
date_of_birth   ``{{${date_of_birth} | date: '%Y%m%d'}}``   birth_date (todate)
phone_number    ``{{${phone_number} | json_escape}}``       phone
time_zone       ``{{${time_zone} | json_escape}}``          time_zone
twitter_handle  ``{{${twitter_handle} | json_escape}}``     tw_uid (unique id)
email           ``{{${email_address} | json_escape}}``      email (unique id)
braze_id        ``{{${braze_id} | json_escape}}``           br_user_id (unique id)
==============  ==========================================  =====================

Every tag sits inside a JSON string, so the template is valid JSON as it stands, and Braze's
``json_escape`` filter keeps it valid once a value holds a quote, a backslash or a line break
(``O"Brien`` would otherwise end the string early and Lytics would refuse the whole body).
``date_of_birth`` is formatted ``YYYYMMDD``, the form Lytics' example shows; it holds only digits.
``${twitter_handle}`` appears in older Braze lists of supported tags but not in the current one
(docs/webhook-kit.md says what to do when it renders empty).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

HTTP_METHOD = "POST"
HEADERS = {"Content-Type": "application/json"}


@dataclass(frozen=True)
class WebhookField:
    """One field of the body: the key Braze sends, the Liquid that fills it, where Lytics maps it."""

    name: str
    liquid: str
    lytics_field: str
    note: str = ""


def _escaped(attribute: str) -> str:
    return "{{${" + attribute + "} | json_escape}}"


FIELDS: tuple[WebhookField, ...] = (
    WebhookField("city", _escaped("city"), "city"),
    WebhookField("country", _escaped("country"), "country"),
    WebhookField("first_name", _escaped("first_name"), "first_name"),
    WebhookField("gender", _escaped("gender"), "gender"),
    WebhookField("language", _escaped("language"), "language"),
    WebhookField("last_name", _escaped("last_name"), "last_name"),
    WebhookField("date_of_birth", "{{${date_of_birth} | date: '%Y%m%d'}}", "birth_date",
                 "YYYYMMDD; Lytics applies todate()"),
    WebhookField("phone_number", _escaped("phone_number"), "phone"),
    WebhookField("time_zone", _escaped("time_zone"), "time_zone"),
    WebhookField("twitter_handle", _escaped("twitter_handle"), "tw_uid",
                 "unique id; tag not in Braze's current list, see docs/webhook-kit.md"),
    WebhookField("email", _escaped("email_address"), "email", "unique id"),
    WebhookField("braze_id", _escaped("braze_id"), "br_user_id", "unique id"),
)


def body_template() -> str:
    """The request body to paste into Braze (Compose > Request body > Raw text), pretty-printed."""
    return json.dumps({f.name: f.liquid for f in FIELDS}, indent=2, ensure_ascii=False)


def header_lines() -> list[str]:
    return [f"{name}: {value}" for name, value in HEADERS.items()]


def mapping_lines() -> list[str]:
    """``field -> Lytics field`` per line, with notes: what the stream makes of each field."""
    width = max(len(f.name) for f in FIELDS)
    return [f"{f.name:<{width}} -> {f.lytics_field}" + (f"  ({f.note})" if f.note else "") for f in FIELDS]
