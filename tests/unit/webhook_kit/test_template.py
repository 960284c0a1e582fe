"""The Braze webhook body: every field of Lytics' braze_users stream, Braze Liquid for each, valid JSON."""

from __future__ import annotations

import json
import re

from include.webhook_kit import template

# Lytics' Braze guide: "The webhook template is expected to include the following fields".
BRAZE_USERS_FIELDS = ["city", "country", "first_name", "gender", "language", "last_name", "date_of_birth",
                      "phone_number", "time_zone", "twitter_handle", "email", "braze_id"]
# Lytics' default mapping of the braze_users stream.
LYTICS_FIELDS = {"braze_id": "br_user_id", "email": "email", "phone_number": "phone",
                 "date_of_birth": "birth_date", "twitter_handle": "tw_uid"}
TAG = re.compile(r"\{\{.*?\}\}")


def test_the_body_has_exactly_the_stream_fields_in_lytics_order():
    body = json.loads(template.body_template())  # valid JSON as printed: every tag sits inside a string
    assert list(body) == BRAZE_USERS_FIELDS
    assert [f.name for f in template.FIELDS] == BRAZE_USERS_FIELDS


def test_every_value_is_one_braze_liquid_tag_of_a_standard_attribute():
    body = json.loads(template.body_template())
    for name, value in body.items():
        assert TAG.fullmatch(value), (name, value)
        assert re.fullmatch(r"\{\{\$\{[a-z_]+\}.*\}\}", value), (name, value)
    assert body["email"] == "{{${email_address} | json_escape}}"  # Braze's name for the email attribute
    assert body["first_name"] == "{{${first_name} | json_escape}}"
    assert body["braze_id"] == "{{${braze_id} | json_escape}}"
    assert body["date_of_birth"] == "{{${date_of_birth} | date: '%Y%m%d'}}"
    assert body["phone_number"] == "{{${phone_number} | json_escape}}"


def test_the_mapping_names_where_lytics_puts_each_field():
    mapped = {f.name: f.lytics_field for f in template.FIELDS}
    for name, lytics in LYTICS_FIELDS.items():
        assert mapped[name] == lytics
    assert all(mapped[n] == n for n in BRAZE_USERS_FIELDS if n not in LYTICS_FIELDS)
    lines = template.mapping_lines()
    assert len(lines) == len(BRAZE_USERS_FIELDS) and any("braze_id" in ln and "br_user_id" in ln for ln in lines)


def _render(values: dict[str, str]) -> str:
    """The body as Braze sends it for one user: each tag replaced by the value, json_escape'd where asked."""
    def fill(field: template.WebhookField) -> str:
        value = values.get(field.name, "")
        return json.dumps(value)[1:-1] if "json_escape" in field.liquid else value

    text = template.body_template()
    for field in template.FIELDS:
        text = text.replace(field.liquid, fill(field))
    return text


def test_the_rendered_body_stays_valid_json_whatever_the_user_holds():
    awkward = {"first_name": 'Jo "JJ"', "last_name": "O'Brien \\ Smith", "city": "Line\nBreak", "email": "a@b.c",
               "braze_id": "5f0e", "date_of_birth": "19820101", "country": "Côte d’Ivoire"}
    body = json.loads(_render(awkward))
    for name, value in awkward.items():
        assert body[name] == value
    assert json.loads(_render({})) == dict.fromkeys(BRAZE_USERS_FIELDS, "")  # a user without any of them


def test_headers_and_method():
    assert template.HTTP_METHOD == "POST"
    assert template.HEADERS == {"Content-Type": "application/json"}
    assert template.header_lines() == ["Content-Type: application/json"]
