"""The local stack's settings file, ``airflow_settings.yaml``, and its loader.

The file has the Astro CLI's shape (``airflow: connections / pools / variables``) plus one section
of our own (``braze_lytics:``: the sandboxes' content and the pipeline file for the stack)::

    airflow:
      connections:
        - conn_id: braze_default
          conn_type: http
          conn_host: ${BRAZE_URL}
          conn_password: ${BRAZE_API_KEY}
          conn_extra: {...}               # a mapping (or a JSON string)
      pools:
        - {pool_name: braze_api, pool_slot: 4, pool_description: ...}
      variables:
        - {variable_name: ..., variable_value: ...}
    braze_lytics:
      sandbox: {braze_segments: [...], lytics_audiences: [...], ...}
      pipeline: {base: include/config/braze_lytics.yaml, overrides: {...}}

``${NAME}`` is replaced with a value only the running stack knows (ports, generated secrets, the
SFTP host key); :data:`PLACEHOLDERS` lists them. An unknown name is an error.

:func:`apply` creates or overwrites the connections, pools and variables through Airflow's REST API
(bulk ``PATCH /api/v2/connections|pools|variables``, ``action_on_existence: overwrite``), so they
are ordinary metadata-DB entries, listed under Admin and editable there. Re-running it puts the
file's values back; it deletes nothing and unpauses nothing.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import requests
import yaml

__all__ = ["PLACEHOLDERS", "SettingsError", "apply", "load", "pipeline_config"]

PLACEHOLDERS = {
    "BRAZE_URL": "Braze sandbox base URL",
    "BRAZE_API_KEY": "Braze sandbox REST API key",
    "LYTICS_URL": "Lytics sandbox base URL",
    "LYTICS_TOKEN": "Lytics sandbox API token",
    "SFTP_HOST": "SFTP server address (loopback)",
    "SFTP_PORT": "SFTP server port",
    "SFTP_USER": "SFTP login",
    "SFTP_PASSWORD": "SFTP password",
    "SFTP_HOST_KEY": "the SFTP server's public host key (what the connection pins)",
    "S3_ENDPOINT": "S3 API endpoint (moto server)",
    "S3_ACCESS_KEY": "S3 access key id",
    "S3_SECRET_KEY": "S3 secret access key",
    "S3_REGION": "S3 region",
    "S3_BUCKET": "the bucket holding the audience state",
}

_VAR = re.compile(r"\$\{([A-Z0-9_]+)\}")


class SettingsError(ValueError):
    """The settings file is not usable; the message says where and why."""


def _substitute(value: Any, values: Mapping[str, str], where: str) -> Any:
    if isinstance(value, str):
        def repl(m: re.Match) -> str:
            name = m.group(1)
            if name not in values:
                raise SettingsError(f"{where}: unknown placeholder ${{{name}}} (known: {', '.join(sorted(values))})")
            return str(values[name])

        return _VAR.sub(repl, value)
    if isinstance(value, list):
        return [_substitute(v, values, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {k: _substitute(v, values, f"{where}.{k}") for k, v in value.items()}
    return value


def load(path: Path, values: Mapping[str, str] | None = None) -> dict:
    """The settings file, with placeholders replaced (left as they are when ``values`` is None)."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as e:
        raise SettingsError(f"cannot read settings file {path}: {e}") from e
    if not isinstance(data, dict) or not isinstance(data.get("airflow", {}), dict):
        raise SettingsError(f"{path}: expected a mapping with an 'airflow:' section")
    data.setdefault("airflow", {})
    data.setdefault("braze_lytics", {})
    for key in ("connections", "pools", "variables"):
        items = data["airflow"].get(key) or []
        if not isinstance(items, list):
            raise SettingsError(f"{path}: airflow.{key} must be a list")
        data["airflow"][key] = items
    if values is None:
        return data
    try:
        return _substitute(data, values, "")
    except SettingsError as e:
        raise SettingsError(f"{path}: {str(e).lstrip('.')}") from None


def _deep_merge(base: dict, overrides: Mapping) -> dict:
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def pipeline_config(settings: dict, repo: Path) -> dict:
    """The pipeline file for the stack: ``braze_lytics.pipeline.base`` with its ``overrides`` merged in."""
    spec = settings.get("braze_lytics", {}).get("pipeline") or {}
    base_path = repo / spec.get("base", "include/config/braze_lytics.yaml")
    try:
        base = yaml.safe_load(base_path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise SettingsError(f"braze_lytics.pipeline.base: cannot read {base_path}: {e}") from e
    return _deep_merge(base, spec.get("overrides") or {})


# ---------------------------------------------------------------------------- the REST API side
def _connection_body(item: dict, where: str) -> dict:
    if not item.get("conn_id") or not item.get("conn_type"):
        raise SettingsError(f"{where}: conn_id and conn_type are required")
    extra = item.get("conn_extra")
    if isinstance(extra, (dict, list)):
        extra = json.dumps(extra)
    port = item.get("conn_port")
    body = {
        "connection_id": item["conn_id"],
        "conn_type": item["conn_type"],
        "description": item.get("conn_description"),
        "host": item.get("conn_host"),
        "login": item.get("conn_login"),
        "schema": item.get("conn_schema"),
        "port": int(port) if port not in (None, "") else None,
        "password": item.get("conn_password"),
        "extra": extra,
    }
    return {k: v for k, v in body.items() if v is not None}


def _pool_body(item: dict, where: str) -> dict:
    if not item.get("pool_name") or item.get("pool_slot") is None:
        raise SettingsError(f"{where}: pool_name and pool_slot are required")
    body = {"name": item["pool_name"], "slots": int(item["pool_slot"])}
    if item.get("pool_description") is not None:
        body["description"] = item["pool_description"]
    return body


def _variable_body(item: dict, where: str) -> dict:
    if not item.get("variable_name"):
        raise SettingsError(f"{where}: variable_name is required")
    value = item.get("variable_value", "")
    body = {"key": item["variable_name"], "value": value if isinstance(value, str) else json.dumps(value)}
    if item.get("variable_description") is not None:
        body["description"] = item["variable_description"]
    return body


def apply(settings: dict, api_url: str, token: str, *, timeout: float = 60.0) -> dict[str, list[str]]:
    """Create or overwrite the file's connections, pools and variables through the REST API.
    Returns the names applied per kind; raises :class:`SettingsError` on any refusal."""
    section = settings["airflow"]
    kinds = {
        "connections": [_connection_body(c, f"airflow.connections[{i}]") for i, c in enumerate(section["connections"])],
        "pools": [_pool_body(p, f"airflow.pools[{i}]") for i, p in enumerate(section["pools"])],
        "variables": [_variable_body(v, f"airflow.variables[{i}]") for i, v in enumerate(section["variables"])],
    }
    headers = {"Authorization": f"Bearer {token}"}
    done: dict[str, list[str]] = {}
    for kind, entities in kinds.items():
        if not entities:
            done[kind] = []
            continue
        body = {"actions": [{"action": "create", "entities": entities, "action_on_existence": "overwrite"}]}
        resp = requests.patch(f"{api_url}/api/v2/{kind}", json=body, headers=headers, timeout=timeout)
        if resp.status_code != 200:
            raise SettingsError(f"PATCH /api/v2/{kind} answered {resp.status_code}: {resp.text[:500]}")
        result = resp.json().get("create") or {}
        if result.get("errors"):
            raise SettingsError(f"PATCH /api/v2/{kind} refused some entries: {result['errors']}")
        done[kind] = [str(k) for k in result.get("success", [])]
    return done
