"""Case table: the pipeline configuration file - every key of `segments:` (with `defaults:`) and of
`lytics_to_braze:` given a wrong type, an out-of-range value or a misspelt name, paths that could leave
their directory, placeholders that do not parse, and files that are not YAML or not UTF-8.

Every case must end in `ConfigError` saying the file, the key path (`segments[0] (vip).compression`,
`lytics_to_braze.batch_size`), what is wrong and what is expected (the "how to fix" of a config error).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import yaml

SEG = {"name": "vip", "segment_id": "seg_vip", "columns": {"user_id": "external_id", "email": "email"}}
DROP_SEG = {**SEG, "source": "drop", "columns": {"user_id": "user_id", "email": "email"},
            "drop": {"path": "/landing/{segment_id}/{ds}", "pattern": "*.zip"}}
AUD = {"audiences": [{"slug": "high_value", "id": "aud_1"}, "churn_risk"]}
DELETE = object()


@dataclass(frozen=True)
class ConfigCase:
    id: str
    text: str | bytes | None  # the file's content; None: the file does not exist
    says: tuple[str, ...]
    section: str = "segments"  # which loader reads it: "segments" or "audiences"


def dump(raw: Any) -> str:
    return yaml.safe_dump(raw, sort_keys=False, allow_unicode=True)


def seg(base: dict | None = None, **changes) -> str:
    entry = copy.deepcopy(base or SEG)
    for key, value in changes.items():
        if value is DELETE:
            entry.pop(key, None)
        else:
            entry[key] = value
    return dump({"segments": [entry], "lytics_to_braze": AUD})


def drop(**changes) -> str:
    return seg(DROP_SEG, drop={**DROP_SEG["drop"], **changes})


def aud(**changes) -> str:
    section = {**copy.deepcopy(AUD), **changes}
    return dump({"segments": [SEG], "lytics_to_braze": {k: v for k, v in section.items() if v is not DELETE}})


S = r"segments\[0\] \(vip\)"  # the key path prefix of the one segment
L = r"lytics_to_braze"

SEGMENT_CASES: list[ConfigCase] = [
    ConfigCase("cfg-top-level-is-a-list", dump([SEG]), (r"top level must be a mapping with 'segments:'",)),
    ConfigCase("cfg-top-level-key-misspelt", dump({"segmnts": [SEG]}), (r"segmnts: unknown key", r"did you mean 'segments'")),
    ConfigCase("cfg-segments-empty", dump({"segments": []}), (r"segments: must be a non-empty list",)),
    ConfigCase("cfg-segments-a-mapping", dump({"segments": {"vip": SEG}}), (r"segments: must be a non-empty list",)),
    ConfigCase("cfg-segment-not-a-mapping", dump({"segments": ["vip"]}), (r"segments\[0\]: must be a mapping, got str",)),
    ConfigCase("cfg-name-missing", seg(name=DELETE), (r"segments\[0\]\.name: required, must be a non-empty string",)),
    ConfigCase("cfg-name-uppercase", seg(name="VIP"), (r"segments\[0\] \(VIP\)\.name: 'VIP' must be lowercase letters",)),
    ConfigCase("cfg-name-a-number", seg(name=5), (r"segments\[0\]\.name: required, must be a non-empty string",)),
    ConfigCase("cfg-name-duplicate", dump({"segments": [SEG, {**SEG, "file_root": "other"}]}),
               (r"segments\[1\] \(vip\)\.name: duplicate segment name 'vip'; names must be unique",)),
    ConfigCase("cfg-same-remote-file-twice", dump({"segments": [SEG, {**SEG, "name": "vip2", "file_root": "vip"}]}),
               (r"segments\[1\] \(vip2\)\.file_root: /upload/vip_YYYYMMDD\.csv is also written by segment 'vip'",
                r"each segment needs its own remote file")),
    ConfigCase("cfg-segment-id-missing", seg(segment_id=DELETE), (S + r"\.segment_id: required",)),
    ConfigCase("cfg-key-misspelt", seg(compresion="gzip"), (S + r"\.compresion: unknown key", r"did you mean 'compression'")),
    ConfigCase("cfg-columns-a-list", seg(columns=["user_id", "email"]),
               (S + r"\.columns: must be a non-empty mapping of CSV column -> source field path",)),
    ConfigCase("cfg-columns-empty", seg(columns={}), (S + r"\.columns: must be a non-empty mapping",)),
    ConfigCase("cfg-column-source-a-number", seg(columns={"user_id": "external_id", "tier": 5}),
               (S + r"\.columns\.tier: must be a source field path like 'email' or 'custom_attributes\.tier', got 5",)),
    ConfigCase("cfg-column-source-with-spaces", seg(columns={"user_id": "external_id", "tier": "custom attributes"}),
               (S + r"\.columns\.tier: must be a source field path", r"got 'custom attributes'")),
    ConfigCase("cfg-column-name-a-number", seg(columns={"user_id": "external_id", 7: "email"}),
               (S + r"\.columns: column names must be non-empty strings, got 7",)),
    ConfigCase("cfg-id-field-not-mapped", seg(id_field="braze_id"),
               (S + r"\.columns: the id field 'braze_id' is not mapped to any column", r"add e\.g\. `user_id: braze_id`")),
    ConfigCase("cfg-id-field-a-list", seg(id_field=["external_id"]), (S + r"\.id_field: must be a field name",)),
    ConfigCase("cfg-fields-to-export-a-string", seg(fields_to_export="email"),
               (S + r"\.fields_to_export: must be a non-empty list of Braze field names",)),
    ConfigCase("cfg-fields-to-export-without-the-id", seg(fields_to_export=["email"]),
               (S + r"\.fields_to_export: must include the id field 'external_id'",)),
    ConfigCase("cfg-file-root-with-path", seg(file_root="../vip"),
               (S + r"\.file_root: '\.\./vip' must be a plain file name root", r"the date and extension are added for you")),
    ConfigCase("cfg-source-unknown", seg(source="s3"), (S + r"\.source: 's3' is not one of \['api', 'drop'\]",)),
    ConfigCase("cfg-compression-unknown", seg(compression="bz2"),
               (S + r"\.compression: 'bz2' is not one of \['none', 'gzip', 'zip'\]",)),
    ConfigCase("cfg-output-format-csv", seg(output_format="csv"), (S + r"\.output_format: 'csv' is not one of",)),
    ConfigCase("cfg-remote-dir-relative", seg(remote_dir="upload"),
               (S + r"\.remote_dir: must be an absolute remote path like /upload, got 'upload'",)),
    ConfigCase("cfg-remote-dir-a-number", seg(remote_dir=5), (S + r"\.remote_dir: must be an absolute remote path",)),
    ConfigCase("cfg-remote-dir-dotdot", seg(remote_dir="/upload/../etc"), (S + r"\.remote_dir: .*'\.\.'",)),
    ConfigCase("cfg-manifest-a-string", seg(manifest="yes please"), (S + r"\.manifest: must be true or false",)),
    ConfigCase("cfg-timestamp-column-empty", seg(timestamp_column=""), (S + r"\.timestamp_column: must be a non-empty string",)),
    ConfigCase("cfg-timestamp-column-clashes", seg(timestamp_column="email"),
               (S + r"\.timestamp_column: 'email' is also a mapped column; rename one of them",)),
    ConfigCase("cfg-max-rejected-share-above-1", seg(max_rejected_share=2),
               (S + r"\.max_rejected_share: must be a number between 0 and 1, got 2",)),
    ConfigCase("cfg-max-rejected-share-percent-string", seg(max_rejected_share="1%"),
               (S + r"\.max_rejected_share: must be a number between 0 and 1, got '1%'",)),
    ConfigCase("cfg-export-timeout-zero", seg(export_timeout_minutes=0),
               (S + r"\.export_timeout_minutes: must be a positive number, got 0",)),
    ConfigCase("cfg-export-timeout-string", seg(export_timeout_minutes="60"),
               (S + r"\.export_timeout_minutes: must be a positive number, got '60'",)),
    ConfigCase("cfg-export-timeout-nan", seg(export_timeout_minutes=math.nan),
               (S + r"\.export_timeout_minutes: must be a positive number, got nan",)),
    ConfigCase("cfg-export-timeout-infinite", seg(export_timeout_minutes=math.inf),
               (S + r"\.export_timeout_minutes: must be a positive number, got inf",)),
    ConfigCase("cfg-poll-interval-boolean", seg(poll_interval_seconds=True),
               (S + r"\.poll_interval_seconds: must be a positive number, got True",)),
    ConfigCase("cfg-bucket-quiet-negative", seg(bucket_quiet_minutes=-5),
               (S + r"\.bucket_quiet_minutes: must be a positive number, got -5",)),
    ConfigCase("cfg-max-record-mib-too-small", seg(max_record_mib=1e-9),
               (S + r"\.max_record_mib: must be from 0\.0009765625 \(1 KiB\) to 1024",)),
    ConfigCase("cfg-max-record-mib-unbounded", seg(max_record_mib=1e9),
               (S + r"\.max_record_mib: must be from .* to 1024 \(a record up to this size is held in memory\)",)),
    ConfigCase("cfg-max-inflate-ratio-below-1", seg(max_inflate_ratio=0.5),
               (S + r"\.max_inflate_ratio: must be at least 1", r"got 0\.5")),
    ConfigCase("cfg-bucket-url-http", seg(bucket_url="https://my-bucket.s3.amazonaws.com"),
               (S + r"\.bucket_url: must be the bucket Braze exports to, like s3://my-bucket",)),
    ConfigCase("cfg-bucket-url-with-credentials", seg(bucket_url="s3://AKIA:secret@my-bucket"),
               (S + r"\.bucket_url: .*the connection goes in bucket_conn_id",)),
    ConfigCase("cfg-bucket-url-dotdot", seg(bucket_url="s3://my-bucket/../other"), (S + r"\.bucket_url: must be",)),
    ConfigCase("cfg-callback-base-url-plain-http", seg(callback_base_url="http://airflow.example.com"),
               (S + r"\.callback_base_url: must use https:// \(plain http:// is allowed only for this machine",)),
    ConfigCase("cfg-callback-base-url-with-credentials", seg(callback_base_url="https://admin:pw@airflow.example.com"),
               (S + r"\.callback_base_url: must not hold credentials", r"got 'https://\*\*\*@airflow\.example\.com'")),
    ConfigCase("cfg-callback-base-url-with-query", seg(callback_base_url="https://airflow.example.com/?token=x"),
               (S + r"\.callback_base_url: must not have a query string or fragment",)),
    ConfigCase("cfg-callback-base-url-not-a-url", seg(callback_base_url="airflow.example.com"),
               (S + r"\.callback_base_url: must be an absolute https:// URL like https://airflow\.example\.com",)),
    ConfigCase("cfg-bucket-cleanup-unknown", seg(bucket_cleanup="purge"),
               (S + r"\.bucket_cleanup: 'purge' is not one of \['keep', 'delete'\]",)),
    ConfigCase("cfg-bucket-conn-empty", seg(bucket_conn_id=""), (S + r"\.bucket_conn_id: must be a non-empty string",)),
    ConfigCase("cfg-braze-conn-a-number", seg(braze_conn_id=5), (S + r"\.braze_conn_id: must be a non-empty string",)),
    ConfigCase("cfg-sftp-conn-empty", seg(sftp_conn_id=""), (S + r"\.sftp_conn_id: must be a non-empty string",)),
    ConfigCase("cfg-pgp-a-string", seg(pgp="lytics_pgp"), (S + r"\.pgp: must be a mapping with decrypt_conn_id / encrypt_conn_id",)),
    ConfigCase("cfg-pgp-compress-a-string", seg(pgp={"compress": "no"}), (S + r"\.pgp\.compress: must be true or false",)),
    ConfigCase("cfg-pgp-conn-a-number", seg(pgp={"encrypt_conn_id": 3}), (S + r"\.pgp\.encrypt_conn_id: must be a connection id string",)),
    ConfigCase("cfg-pgp-key-misspelt", seg(pgp={"encrypt_conn": "lytics_pgp"}),
               (S + r"\.pgp\.encrypt_conn: unknown key", r"did you mean 'encrypt_conn_id'")),
    ConfigCase("cfg-drop-without-path", seg(DROP_SEG, drop=DELETE),
               (S + r"\.drop\.path: source 'drop' needs drop\.path",)),
    ConfigCase("cfg-drop-with-api-source", seg(drop={"path": "/landing"}), (S + r"\.drop: only used with source: drop",)),
    ConfigCase("cfg-drop-placeholder-unclosed", drop(path="/landing/{segment_id"),
               (S + r"\.drop\.path: '/landing/\{segment_id' has a placeholder that does not parse",
                r"allowed: \['\{segment_id\}', '\{name\}', '\{ds\}', '\{ds_nodash\}'\]")),
    ConfigCase("cfg-drop-placeholder-unknown", drop(path="/landing/{date}"),
               (S + r"\.drop\.path: .* placeholder .*'date'", r"allowed: ")),
    ConfigCase("cfg-drop-placeholder-positional", drop(path="/landing/{}"),
               (S + r"\.drop\.path: .*does not parse", r"allowed: ")),
    ConfigCase("cfg-drop-placeholder-stray-brace", drop(path="/landing/ds}"),
               (S + r"\.drop\.path: .*does not parse", r"literal brace as \{\{ or \}\}")),
    ConfigCase("cfg-drop-placeholder-format-spec", drop(path="/landing/{ds:%Y}"), (S + r"\.drop\.path: .*does not parse",)),
    ConfigCase("cfg-drop-path-relative", drop(path="landing/{ds}"),
               (S + r"\.drop\.path: 'landing/\{ds\}' must be an absolute directory",
                r"depend on each worker's current directory")),
    ConfigCase("cfg-drop-path-dotdot", drop(path="/landing/../../etc"), (S + r"\.drop\.path: .*'\.\.'",)),
    ConfigCase("cfg-drop-pattern-empty", drop(pattern=""), (S + r"\.drop\.pattern: must be a glob like '\*\.zip'",)),
    ConfigCase("cfg-drop-conn-a-number", drop(conn_id=7), (S + r"\.drop\.conn_id: must be the id of an SFTP connection, got 7",)),
    ConfigCase("cfg-drop-key-misspelt", drop(patern="*.zip"), (S + r"\.drop\.patern: unknown key", r"did you mean 'pattern'")),
    ConfigCase("cfg-defaults-a-list", dump({"defaults": ["gzip"], "segments": [SEG]}), (r"defaults: must be a mapping",)),
    ConfigCase("cfg-defaults-key-misspelt", dump({"defaults": {"remote_dri": "/x"}, "segments": [SEG]}),
               (r"defaults\.remote_dri: unknown key", r"did you mean 'remote_dir'")),
    ConfigCase("cfg-defaults-segment-only-key", dump({"defaults": {"name": "x"}, "segments": [SEG]}),
               (r"defaults\.name: unknown key",)),
    ConfigCase("cfg-defaults-bad-value-reaches-every-segment", dump({"defaults": {"compression": "rar"}, "segments": [SEG]}),
               (S + r"\.compression: 'rar' is not one of",)),
    # --- the file itself -------------------------------------------------------------------------------
    ConfigCase("cfg-file-missing", None, (r"configuration file not found", r"set BRAZE_LYTICS_CONFIG to its path")),
    ConfigCase("cfg-file-not-yaml", "segments: [unclosed\n", (r"not valid YAML", r"line 2", r"fix the line shown")),
    ConfigCase("cfg-file-tab-indented", "segments:\n\t- name: vip\n", (r"not valid YAML", r"tab", r"not tabs")),
    ConfigCase("cfg-file-latin1", seg(columns={"user_id": "external_id", "cité": "home_city"}).encode("latin-1"),
               (r"not UTF-8 text", r"save the file as UTF-8")),
    ConfigCase("cfg-file-is-a-directory", b"<directory>", (r"cannot be read", r"set BRAZE_LYTICS_CONFIG to a readable YAML file")),
    ConfigCase("cfg-file-empty", "", (r"top level must be a mapping",)),
]

AUDIENCE_CASES: list[ConfigCase] = [ConfigCase(c.id, c.text, c.says, "audiences") for c in [
    ConfigCase("cfg-l2b-section-missing", dump({"segments": [SEG]}), (r"no 'lytics_to_braze:' section", r"add one with an 'audiences:' list")),
    ConfigCase("cfg-l2b-section-a-list", dump({"lytics_to_braze": ["high_value"]}), (r"no 'lytics_to_braze:' section",)),
    ConfigCase("cfg-l2b-key-misspelt", aud(batchsize=50), (L + r"\.batchsize: unknown key", r"did you mean 'batch_size'")),
    ConfigCase("cfg-l2b-audiences-missing", aud(audiences=DELETE), (L + r"\.audiences: must be a non-empty list",)),
    ConfigCase("cfg-l2b-audiences-a-string", aud(audiences="high_value"), (L + r"\.audiences: must be a non-empty list",)),
    ConfigCase("cfg-l2b-audience-a-number", aud(audiences=[42]),
               (L + r"\.audiences\[0\]: must be a slug string or a mapping with slug",)),
    ConfigCase("cfg-l2b-audience-key-misspelt", aud(audiences=[{"slug": "vip", "idd": "x"}]),
               (L + r"\.audiences\[0\]\.idd: unknown key \(use slug and id\)",)),
    ConfigCase("cfg-l2b-audience-slug-with-space", aud(audiences=["high value"]),
               (L + r"\.audiences\[0\]\.slug: must be the audience's Lytics slug_name, got 'high value'",)),
    ConfigCase("cfg-l2b-audience-slug-dotdot", aud(audiences=[".."]), (L + r"\.audiences\[0\]\.slug: must be",)),
    ConfigCase("cfg-l2b-audience-duplicate", aud(audiences=["vip", {"slug": "vip", "id": "a2"}]),
               (L + r"\.audiences\[1\]\.slug: duplicate audience 'vip'",)),
    ConfigCase("cfg-l2b-audience-id-a-number", aud(audiences=[{"slug": "vip", "id": 5}]),
               (L + r"\.audiences\[0\]\.id: must be the Lytics segment id string",)),
    ConfigCase("cfg-l2b-batch-size-76", aud(batch_size=76), (L + r"\.batch_size: must be 1\.\.75 \(Braze's hard limit; 50 for MAU",)),
    ConfigCase("cfg-l2b-batch-size-string", aud(batch_size="75"), (L + r"\.batch_size: must be 1\.\.75", r"got '75'")),
    ConfigCase("cfg-l2b-batch-size-boolean", aud(batch_size=True), (L + r"\.batch_size: must be 1\.\.75", r"got True")),
    ConfigCase("cfg-l2b-scan-page-size-101", aud(scan_page_size=101), (L + r"\.scan_page_size: must be 1\.\.100 \(Lytics' scan limit\)",)),
    ConfigCase("cfg-l2b-rate-limit-requests-zero", aud(rate_limit_requests=0), (L + r"\.rate_limit_requests: must be a positive integer",)),
    ConfigCase("cfg-l2b-rate-limit-seconds-nan", aud(rate_limit_seconds=math.nan), (L + r"\.rate_limit_seconds: must be a positive number, got nan",)),
    ConfigCase("cfg-l2b-rate-limit-seconds-boolean", aud(rate_limit_seconds=True), (L + r"\.rate_limit_seconds: must be a positive number, got True",)),
    ConfigCase("cfg-l2b-max-chunks-fraction", aud(max_chunks=1.5), (L + r"\.max_chunks: must be a positive integer, got 1\.5",)),
    ConfigCase("cfg-l2b-min-chunk-users-zero", aud(min_chunk_users=0), (L + r"\.min_chunk_users: must be a positive integer",)),
    ConfigCase("cfg-l2b-delivery-concurrency-negative", aud(delivery_concurrency=-1), (L + r"\.delivery_concurrency: must be a positive integer",)),
    ConfigCase("cfg-l2b-max-remove-share-above-1", aud(max_remove_share=1.5), (L + r"\.max_remove_share: must be a share from 0 to 1",)),
    ConfigCase("cfg-l2b-max-missing-id-share-percent", aud(max_missing_id_share="5%"), (L + r"\.max_missing_id_share: must be a share", r"0\.10 for 10%")),
    ConfigCase("cfg-l2b-scan-tolerance-share-1", aud(scan_total_tolerance_share=1), (L + r"\.scan_total_tolerance_share: must be a share from 0 to below 1",)),
    ConfigCase("cfg-l2b-scan-tolerance-members-negative", aud(scan_total_tolerance_members=-1), (L + r"\.scan_total_tolerance_members: must be a whole number",)),
    ConfigCase("cfg-l2b-approval-timeout-zero", aud(approval_timeout_hours=0), (L + r"\.approval_timeout_hours: must be a number of hours above 0 and at most 168",)),
    ConfigCase("cfg-l2b-approval-timeout-a-month", aud(approval_timeout_hours=720), (L + r"\.approval_timeout_hours: .*at most 168 \(a week\)",)),
    ConfigCase("cfg-l2b-park-after-runs-zero", aud(park_after_runs=0), (L + r"\.park_after_runs: must be a positive integer",)),
    ConfigCase("cfg-l2b-retire-a-string", aud(retire="old_vip"), (L + r"\.retire: must be a list of audience slugs",)),
    ConfigCase("cfg-l2b-retire-bad-slug", aud(retire=["../old"]), (L + r"\.retire: must be a list of audience slugs", r"'\.\./old'")),
    ConfigCase("cfg-l2b-retire-still-configured", aud(retire=["churn_risk"]),
               (L + r"\.retire: \['churn_risk'\] are still listed under audiences; remove them there to retire them",)),
    ConfigCase("cfg-l2b-prune-after-days-zero", aud(prune_after_days=0), (L + r"\.prune_after_days: must be a number of days above 0",)),
    ConfigCase("cfg-l2b-prune-after-days-infinite", aud(prune_after_days=math.inf), (L + r"\.prune_after_days: .*at most 36500", r"got inf")),
    ConfigCase("cfg-l2b-drift-sample-size-zero", aud(drift_sample_size=0), (L + r"\.drift_sample_size: must be a positive integer",)),
    ConfigCase("cfg-l2b-drift-removed-sample-negative", aud(drift_removed_sample_size=-1), (L + r"\.drift_removed_sample_size: must be a whole number >= 0",)),
    ConfigCase("cfg-l2b-drift-repair-a-string", aud(drift_repair="yes"), (L + r"\.drift_repair: must be true or false",)),
    ConfigCase("cfg-l2b-drift-rate-zero", aud(drift_rate_limit_per_minute=0), (L + r"\.drift_rate_limit_per_minute: must be a positive integer",)),
    ConfigCase("cfg-l2b-existing-users-a-string", aud(existing_users="no"), (L + r"\.existing_users: must be true or false",)),
    ConfigCase("cfg-l2b-update-existing-only-a-number", aud(update_existing_only=1), (L + r"\.update_existing_only: must be true or false",)),
    ConfigCase("cfg-l2b-state-url-a-number", aud(state_url=5), (L + r"\.state_url: must be a directory path or fsspec URL",)),
    ConfigCase("cfg-l2b-state-url-empty", aud(state_url=""), (L + r"\.state_url: must be a directory path",)),
    ConfigCase("cfg-l2b-state-url-dotdot", aud(state_url="s3://bucket/state/../../other"), (L + r"\.state_url: .*'\.\.'",)),
    ConfigCase("cfg-l2b-id-field-blank", aud(id_field="  "), (L + r"\.id_field: must be a non-empty string",)),
    ConfigCase("cfg-l2b-attribute-a-number", aud(attribute=5), (L + r"\.attribute: must be a non-empty string",)),
    ConfigCase("cfg-l2b-lytics-conn-null", aud(lytics_conn_id=None), (L + r"\.lytics_conn_id: must be a non-empty string",)),
    ConfigCase("cfg-l2b-braze-conn-empty", aud(braze_conn_id=""), (L + r"\.braze_conn_id: must be a non-empty string",)),
    ConfigCase("cfg-l2b-file-not-yaml", "lytics_to_braze:\n  audiences: [a, b\n", (r"not valid YAML", r"fix the line shown")),
]]
