"""The `lytics_to_braze:` section of the pipeline configuration file.

Which Lytics audiences are mirrored into a Braze array attribute (default
`lytics_segments`), keyed by the Lytics field that holds the user's Braze external id
(default `braze_id`, as in Lytics' own "Export Audiences to Braze" job - see
docs/vendor-contracts.md#lytics-api-and-audience-scans).
Errors name the file, the key and the problem, like the rest of the configuration.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from include.clients.braze.limits import (
    MAU_PLAN_MAX_OBJECTS,
    MAX_OBJECTS_PER_REQUEST,
    RATE_LIMIT_REQUESTS,
    RATE_LIMIT_SECONDS,
)
from include.clients.lytics.scan import MAX_LIMIT as LYTICS_MAX_PAGE
from include.clients.lytics.scan import TOTAL_TOLERANCE_MEMBERS as LYTICS_TOTAL_TOLERANCE_MEMBERS
from include.clients.lytics.scan import TOTAL_TOLERANCE_SHARE as LYTICS_TOTAL_TOLERANCE_SHARE
from include.common.config_file import path_trick, read_yaml, unknown_keys
from include.common.errors import ConfigError

_SLUG_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")

@dataclass(frozen=True)
class AudienceRef:
    slug: str  # the value written into the Braze array (Lytics' slug_name)
    id: str  # Lytics segment id (or the slug: the API takes either)


@dataclass(frozen=True)
class AudienceSyncConfig:
    path: Path
    audiences: tuple[AudienceRef, ...]
    lytics_conn_id: str = "lytics_default"
    braze_conn_id: str = "braze_default"
    state_url: str | None = None  # fsspec URL; None = settings.default_state_url()
    id_field: str = "braze_id"
    attribute: str = "lytics_segments"
    batch_size: int = MAX_OBJECTS_PER_REQUEST
    existing_users: bool = True
    update_existing_only: bool = False
    scan_page_size: int = LYTICS_MAX_PAGE
    rate_limit_requests: int = RATE_LIMIT_REQUESTS
    rate_limit_seconds: float = RATE_LIMIT_SECONDS
    max_chunks: int = 16
    min_chunk_users: int = 5000
    delivery_concurrency: int = 4  # slots of the `braze_api` pool: requests of the shared rate budget held back for them
    # The guard (guard.py): a run whose changes look like a broken source waits for a person's approval.
    max_remove_share: float = 0.10  # removes / committed members of an audience above this -> approval
    max_missing_id_share: float = 0.05  # members without `id_field` / members read above this -> approval
    scan_total_tolerance_share: float = LYTICS_TOTAL_TOLERANCE_SHARE  # members read vs Lytics' `total`:
    scan_total_tolerance_members: int = LYTICS_TOTAL_TOLERANCE_MEMBERS  # max(share * total, members) apart
    approval_timeout_hours: float = 12.0  # no answer within this long -> the run fails, nothing sent
    # Users Braze rejects: re-sent by the next runs, then parked (reported, no longer sent) after this many runs.
    park_after_runs: int = 3
    # Audiences no longer synced whose slug must be removed from every Braze profile (through the guard).
    retire: tuple[str, ...] = ()
    # Files of runs that never committed (failed, killed, dry runs) are deleted after this many days.
    prune_after_days: float = 7.0
    # The drift check (drift.py): users sampled per audience from the committed snapshot, plus users
    # recently removed; their Braze profiles are read with /users/export/ids (its own rate limit).
    drift_sample_size: int = 1000
    drift_removed_sample_size: int = 200
    drift_repair: bool = False  # queue the users found out of step for the next sync run
    drift_rate_limit_per_minute: int = 250

    def select(self, slugs: list[str] | None) -> list[AudienceRef]:
        if not slugs:
            return list(self.audiences)
        known = {a.slug for a in self.audiences}
        unknown = [s for s in slugs if s not in known]
        if unknown:
            raise ConfigError(f"{self.path}: unknown audience(s) {unknown} in the run's 'audiences' param; "
                              f"configured: {sorted(known)}")
        return [a for a in self.audiences if a.slug in slugs]

    def to_dict(self) -> dict:
        """A JSON-able copy: the run's frozen configuration (XCom); `from_dict` reverses it."""
        data = asdict(self)
        data["path"] = str(self.path)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> AudienceSyncConfig:
        data = dict(data)
        data["path"] = Path(data["path"])
        data["audiences"] = tuple(AudienceRef(**a) for a in data["audiences"])
        data["retire"] = tuple(data.get("retire") or ())
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


# Keys of the `lytics_to_braze:` section besides `audiences`, with their defaults (written once, above).
SETTING_DEFAULTS: dict[str, Any] = {f.name: f.default for f in fields(AudienceSyncConfig) if f.name not in ("path", "audiences")}


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def load_audience_config(path: Path | str | None = None) -> AudienceSyncConfig:
    path, raw = read_yaml(path)
    section = raw.get("lytics_to_braze") if isinstance(raw, dict) else None
    if not isinstance(section, dict):
        raise ConfigError(f"{path}: no 'lytics_to_braze:' section; add one with an 'audiences:' list "
                          f"(see the README's configuration reference)")
    return parse_audience_config(section, path)


def parse_audience_config(section: dict, path: Path) -> AudienceSyncConfig:
    errors: list[str] = []
    where = "lytics_to_braze"
    unknown_keys(section, set(SETTING_DEFAULTS) | {"audiences"}, f"{where}.", errors)
    opts = {**SETTING_DEFAULTS, **{k: v for k, v in section.items() if k in SETTING_DEFAULTS}}
    for key in ("lytics_conn_id", "braze_conn_id", "id_field", "attribute"):
        if not isinstance(opts[key], str) or not opts[key].strip():
            errors.append(f"{where}.{key}: must be a non-empty string")
    if opts["state_url"] is not None and (not isinstance(opts["state_url"], str) or not opts["state_url"]):
        errors.append(f"{where}.state_url: must be a directory path or fsspec URL like s3://bucket/prefix")
    elif opts["state_url"] is not None and (problem := path_trick(opts["state_url"].split("://", 1)[-1])):
        errors.append(f"{where}.state_url: {opts['state_url']!r} {problem}")
    batch = opts["batch_size"]
    if not isinstance(batch, int) or isinstance(batch, bool) or not 1 <= batch <= MAX_OBJECTS_PER_REQUEST:
        errors.append(f"{where}.batch_size: must be 1..{MAX_OBJECTS_PER_REQUEST} (Braze's hard limit; {MAU_PLAN_MAX_OBJECTS} for "
                      f"MAU-plan workspaces), got {batch!r}")
    page = opts["scan_page_size"]
    if not isinstance(page, int) or isinstance(page, bool) or not 1 <= page <= LYTICS_MAX_PAGE:
        errors.append(f"{where}.scan_page_size: must be 1..{LYTICS_MAX_PAGE} (Lytics' scan limit), got {page!r}")
    for key in ("rate_limit_requests", "max_chunks", "min_chunk_users", "delivery_concurrency", "park_after_runs",
                "drift_sample_size", "drift_rate_limit_per_minute"):
        if not isinstance(opts[key], int) or isinstance(opts[key], bool) or opts[key] < 1:
            errors.append(f"{where}.{key}: must be a positive integer, got {opts[key]!r}")
    if not _is_number(opts["rate_limit_seconds"]) or not 0 < opts["rate_limit_seconds"] < math.inf:
        errors.append(f"{where}.rate_limit_seconds: must be a positive number, got {opts['rate_limit_seconds']!r}")
    removed_sample = opts["drift_removed_sample_size"]
    if not isinstance(removed_sample, int) or isinstance(removed_sample, bool) or removed_sample < 0:
        errors.append(f"{where}.drift_removed_sample_size: must be a whole number >= 0, got {removed_sample!r}")
    if not _is_number(opts["prune_after_days"]) or not 0 < opts["prune_after_days"] <= 36_500:
        errors.append(f"{where}.prune_after_days: must be a number of days above 0 (at most 36500), "
                      f"got {opts['prune_after_days']!r}")
    retire = opts["retire"]
    if retire is None:
        retire = ()
    if not isinstance(retire, list | tuple) or not all(isinstance(r, str) and _SLUG_RE.match(r) for r in retire):
        errors.append(f"{where}.retire: must be a list of audience slugs no longer synced, got {retire!r}")
    else:
        opts["retire"] = tuple(retire)
    for key in ("existing_users", "update_existing_only", "drift_repair"):
        if not isinstance(opts[key], bool):
            errors.append(f"{where}.{key}: must be true or false")
    for key in ("max_remove_share", "max_missing_id_share"):
        if not _is_number(opts[key]) or not 0 <= opts[key] <= 1:
            errors.append(f"{where}.{key}: must be a share from 0 to 1 (e.g. 0.10 for 10%), got {opts[key]!r}")
    if not _is_number(opts["scan_total_tolerance_share"]) or not 0 <= opts["scan_total_tolerance_share"] < 1:
        errors.append(f"{where}.scan_total_tolerance_share: must be a share from 0 to below 1 (e.g. 0.01 for 1%), "
                      f"got {opts['scan_total_tolerance_share']!r}")
    members = opts["scan_total_tolerance_members"]
    if not isinstance(members, int) or isinstance(members, bool) or members < 0:
        errors.append(f"{where}.scan_total_tolerance_members: must be a whole number of members >= 0, got {members!r}")
    if not _is_number(opts["approval_timeout_hours"]) or not 0 < opts["approval_timeout_hours"] <= 24 * 7:
        errors.append(f"{where}.approval_timeout_hours: must be a number of hours above 0 and at most 168 (a week), "
                      f"got {opts['approval_timeout_hours']!r}")

    audiences: list[AudienceRef] = []
    raw_list = section.get("audiences")
    if not isinstance(raw_list, list) or not raw_list:
        errors.append(f"{where}.audiences: must be a non-empty list of {{slug: ..., id: ...}} entries")
        raw_list = []
    seen: set[str] = set()
    for i, entry in enumerate(raw_list):
        here = f"{where}.audiences[{i}]"
        if isinstance(entry, str):
            entry = {"slug": entry}
        if not isinstance(entry, dict):
            errors.append(f"{here}: must be a slug string or a mapping with slug (and optional id)")
            continue
        for key in entry:
            if key not in ("slug", "id"):
                errors.append(f"{here}.{key}: unknown key (use slug and id)")
        slug = entry.get("slug")
        if not isinstance(slug, str) or not _SLUG_RE.match(slug):
            errors.append(f"{here}.slug: must be the audience's Lytics slug_name, got {slug!r}")
            continue
        if slug in seen:
            errors.append(f"{here}.slug: duplicate audience {slug!r}")
        seen.add(slug)
        audience_id = entry.get("id", slug)
        if not isinstance(audience_id, str) or not audience_id:
            errors.append(f"{here}.id: must be the Lytics segment id string")
            continue
        audiences.append(AudienceRef(slug=slug, id=audience_id))
    if len(audiences) > 500:
        errors.append(f"{where}.audiences: Lytics accounts hold at most 500 audiences; got {len(audiences)}")
    both = sorted(set(opts["retire"] if isinstance(opts["retire"], tuple) else ()) & {a.slug for a in audiences})
    if both:
        errors.append(f"{where}.retire: {both} are still listed under audiences; remove them there to retire them")
    if errors:
        raise ConfigError(f"{path}: invalid configuration:\n  - " + "\n  - ".join(errors))
    return AudienceSyncConfig(path=path, audiences=tuple(audiences), **opts)
