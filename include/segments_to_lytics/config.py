"""The pipeline configuration file: which Braze segments go to Lytics, and how.

The file is YAML; its path comes from ``BRAZE_LYTICS_CONFIG`` (default:
``include/config/braze_lytics.yaml``). Every problem is reported at once, each as
``<file>: <key path>: <what is wrong>`` so the fix is obvious. Adding a segment is a
YAML edit, never a Python edit. See the README's configuration reference.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path, PurePosixPath
from typing import Any

from include.common.config_file import path_trick, read_yaml, unknown_keys
from include.common.errors import ConfigError
from include.segments_to_lytics.export_callback import check_base_url

SOURCE_KINDS = ("api", "drop")
COMPRESSIONS = ("none", "gzip", "zip")
OUTPUT_FORMATS = ("zip", "gzip")
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_FILE_ROOT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_FIELD_RE = re.compile(r"^[^.\s][^\s]*$")
# Braze segment API identifiers (UUID-like); the id names drop and bucket folders, so no '/', no '..'.
_SEGMENT_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_DROP_PLACEHOLDERS = ("{segment_id}", "{name}", "{ds}", "{ds_nodash}")
_MIN_RECORD_MIB, _MAX_RECORD_MIB = 1 / 1024, 1024

# Keys allowed in `defaults:` and, overriding them, in each segment (defaults: SegmentConfig's).
_DEFAULTABLE = ("braze_conn_id", "sftp_conn_id", "source", "output_format", "remote_dir", "compression", "manifest",
                "timestamp_column", "max_rejected_share", "export_timeout_minutes", "poll_interval_seconds",
                "bucket_url", "bucket_conn_id", "bucket_quiet_minutes", "bucket_cleanup", "max_record_mib",
                "max_inflate_ratio", "callback_base_url")
BUCKET_SCHEMES = ("s3", "gs", "gcs", "abfs", "az")
BUCKET_CLEANUPS = ("keep", "delete")
_SEGMENT_ONLY = {"name", "segment_id", "columns", "fields_to_export", "id_field", "file_root", "pgp", "drop"}
_PGP_KEYS = {"decrypt_conn_id", "encrypt_conn_id", "compress"}
_DROP_KEYS = {"path", "pattern", "conn_id"}


@dataclass(frozen=True)
class DropSource:
    """Where a dashboard-style CSV export (or a zip of it) is dropped for us to pick up."""

    path: str  # directory; may use {segment_id} {name} {ds} {ds_nodash}
    pattern: str = "*"
    conn_id: str | None = None  # SFTP connection to read from; None = local directory

    def directory_for(self, *, segment_id: str, name: str, ds: str) -> str:
        """The drop directory for one segment and logical date."""
        return self.path.format(segment_id=segment_id, name=name, ds=ds, ds_nodash=ds.replace("-", ""))


@dataclass(frozen=True)
class PgpOptions:
    decrypt_conn_id: str | None = None  # private key + passphrase for encrypted inputs
    encrypt_conn_id: str | None = None  # Lytics' public key; None = deliver unencrypted
    compress: bool = True  # let gpg compress (pointless when the CSV is already gzip/zip)


@dataclass(frozen=True)
class SegmentConfig:
    """One Braze segment and how it is shaped and delivered to Lytics."""

    name: str
    segment_id: str
    columns: dict[str, str]  # CSV column -> dotted source field path, in header order
    id_field: str
    file_root: str
    fields_to_export: tuple[str, ...]
    source: str = "api"
    output_format: str = "zip"
    drop: DropSource | None = None
    remote_dir: str = "/upload"
    compression: str = "none"
    manifest: bool = True
    timestamp_column: str = "exported_at"
    max_rejected_share: float = 0.01
    export_timeout_minutes: float = 60
    poll_interval_seconds: float = 60
    braze_conn_id: str = "braze_default"
    sftp_conn_id: str = "lytics_sftp"
    # Bucket exports (the workspace has S3/GCS/Azure credentials in Braze): where Braze writes them.
    bucket_url: str | None = None  # e.g. s3://acme-braze-exports; None = Braze answers with a link
    bucket_conn_id: str = "aws_default"  # Airflow connection for that bucket (ObjectStoragePath)
    bucket_quiet_minutes: float = 5  # complete when no object changed for this long
    bucket_cleanup: str = "keep"  # keep | delete: what happens to the objects after delivery
    # Public https base URL of this deployment's Airflow API server, as Braze reaches it: when set,
    # exports ask Braze to POST <base>/braze-lytics/export-callback/<token> once ready
    # (include/segments_to_lytics/export_callback.py); None = wait by polling only.
    callback_base_url: str | None = None
    # Limits that keep memory bounded for any input (a damaged or hostile export).
    max_record_mib: float = 16  # a longer line/record is quarantined, not read into memory
    max_inflate_ratio: float = 200  # a zip/gzip that inflates more than this is refused
    pgp: PgpOptions = field(default_factory=PgpOptions)

    def remote_name(self, ds_nodash: str) -> str:
        """`<root>_<YYYYMMDD>.csv[.gz|.zip][.pgp]`: Lytics' stable-root-plus-date convention."""
        name = f"{self.file_root}_{ds_nodash}.csv"
        name += {"none": "", "gzip": ".gz", "zip": ".zip"}[self.compression]
        return name + (".pgp" if self.pgp.encrypt_conn_id else "")

    def remote_path(self, ds_nodash: str) -> str:
        return str(PurePosixPath(self.remote_dir) / self.remote_name(ds_nodash))

    def to_dict(self) -> dict[str, Any]:
        """A small JSON-able form (for XCom / task mapping); `from_dict` reverses it.

        `columns` travels as a list of [column, source] pairs: its order is the CSV header's, and
        a JSON object's key order does not survive every XCom store (PostgreSQL keeps XCom as
        JSONB, which sorts keys by length).
        """
        data = asdict(self)
        data["columns"] = [[column, source] for column, source in self.columns.items()]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SegmentConfig:
        data = dict(data)
        if isinstance(data.get("columns"), list):  # (a mapping: written by an older version, in a run under way)
            data["columns"] = {column: source for column, source in data["columns"]}
        data["pgp"] = PgpOptions(**data.get("pgp") or {})
        data["drop"] = DropSource(**data["drop"]) if data.get("drop") else None
        data["fields_to_export"] = tuple(data["fields_to_export"])
        return cls(**data)


_DEFAULTS: dict[str, Any] = {f.name: f.default for f in fields(SegmentConfig) if f.name in _DEFAULTABLE}


@dataclass(frozen=True)
class PipelineConfig:
    path: Path
    segments: tuple[SegmentConfig, ...]

    def select(self, names: list[str] | None) -> list[SegmentConfig]:
        """The segments named (all when `names` is empty), refusing unknown names."""
        if not names:
            return list(self.segments)
        known = {s.name for s in self.segments}
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ConfigError(
                f"{self.path}: unknown segment name(s) {unknown} in the run's 'segments' param; "
                f"configured: {sorted(known)}"
            )
        return [s for s in self.segments if s.name in names]


def load_config(path: Path | str | None = None) -> PipelineConfig:
    """Read and validate the configuration file; raise ConfigError listing every problem."""
    path, raw = read_yaml(path)
    return parse_config(raw, path)


def parse_config(raw: Any, path: Path) -> PipelineConfig:
    errors: list[str] = []
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping with 'segments:' (and optional 'defaults:')")
    # `lytics_to_braze:` belongs to the audience pipeline (include/audiences_to_braze/config.py).
    unknown_keys(raw, {"defaults", "segments", "lytics_to_braze"}, "", errors)
    defaults = dict(_DEFAULTS)
    user_defaults = raw.get("defaults") or {}
    if not isinstance(user_defaults, dict):
        errors.append("defaults: must be a mapping")
        user_defaults = {}
    unknown_keys(user_defaults, set(_DEFAULTS), "defaults.", errors)
    defaults.update({k: v for k, v in user_defaults.items() if k in _DEFAULTS})

    segments_raw = raw.get("segments")
    segments: list[SegmentConfig] = []
    if segments_raw is None and "lytics_to_braze" in raw:
        segments_raw = []  # a file configuring only the audience pipeline
    elif not isinstance(segments_raw, list) or not segments_raw:
        errors.append("segments: must be a non-empty list of segment entries")
        segments_raw = []
    seen_names: set[str] = set()
    seen_files: dict[tuple[str, str], str] = {}
    for i, entry in enumerate(segments_raw):
        where = f"segments[{i}]"
        if isinstance(entry, dict) and isinstance(entry.get("name"), str):
            where = f"segments[{i}] ({entry['name']})"
        seg = _parse_segment(entry, defaults, where, errors)
        if seg is None:
            continue
        if seg.name in seen_names:
            errors.append(f"{where}.name: duplicate segment name {seg.name!r}; names must be unique")
        seen_names.add(seg.name)
        key = (seg.sftp_conn_id, seg.remote_path("YYYYMMDD"))
        if key in seen_files:
            errors.append(
                f"{where}.file_root: {seg.remote_path('YYYYMMDD')} is also written by segment "
                f"{seen_files[key]!r}; each segment needs its own remote file"
            )
        seen_files[key] = seg.name
        segments.append(seg)
    if errors:
        raise ConfigError(f"{path}: invalid configuration:\n  - " + "\n  - ".join(errors))
    return PipelineConfig(path=path, segments=tuple(segments))


def _parse_segment(entry: Any, defaults: dict[str, Any], where: str, errors: list[str]) -> SegmentConfig | None:
    if not isinstance(entry, dict):
        errors.append(f"{where}: must be a mapping, got {type(entry).__name__}")
        return None
    n_errors = len(errors)
    unknown_keys(entry, _SEGMENT_ONLY | set(_DEFAULTS), f"{where}.", errors)
    opts = {**defaults, **{k: v for k, v in entry.items() if k in _DEFAULTS}}

    name = _require_str(entry, "name", where, errors)
    if name is not None and not _NAME_RE.match(name):
        errors.append(f"{where}.name: {name!r} must be lowercase letters, digits, '_' or '-' (max 63)")
    segment_id = _require_str(entry, "segment_id", where, errors)
    if segment_id is not None and not _SEGMENT_ID_RE.match(segment_id):
        errors.append(f"{where}.segment_id: {segment_id!r} must be Braze's segment API identifier (letters, digits, "
                      f"'_', '-', '.'; no '/' or leading '.': it names drop and bucket folders)")
        segment_id = None

    for key, allowed in (("source", SOURCE_KINDS), ("compression", COMPRESSIONS), ("output_format", OUTPUT_FORMATS)):
        if opts[key] not in allowed:
            errors.append(f"{where}.{key}: {opts[key]!r} is not one of {list(allowed)}")
    for key in ("braze_conn_id", "sftp_conn_id", "timestamp_column"):
        if not isinstance(opts[key], str) or not opts[key]:
            errors.append(f"{where}.{key}: must be a non-empty string")
    for key in ("export_timeout_minutes", "poll_interval_seconds", "bucket_quiet_minutes", "max_record_mib",
                "max_inflate_ratio"):
        if not isinstance(opts[key], int | float) or isinstance(opts[key], bool) or not 0 < opts[key] < math.inf:
            errors.append(f"{where}.{key}: must be a positive number, got {opts[key]!r}")
        elif key == "max_inflate_ratio" and opts[key] < 1:
            errors.append(f"{where}.max_inflate_ratio: must be at least 1 (a file always inflates to at least its "
                          f"own size), got {opts[key]!r}")
        elif key == "max_record_mib" and not _MIN_RECORD_MIB <= opts[key] <= _MAX_RECORD_MIB:
            errors.append(f"{where}.max_record_mib: must be from {_MIN_RECORD_MIB} (1 KiB) to {_MAX_RECORD_MIB} "
                          f"(a record up to this size is held in memory), got {opts[key]!r}")
    if opts["bucket_cleanup"] not in BUCKET_CLEANUPS:
        errors.append(f"{where}.bucket_cleanup: {opts['bucket_cleanup']!r} is not one of {list(BUCKET_CLEANUPS)}")
    bucket = opts["bucket_url"]
    if bucket is not None and (not isinstance(bucket, str) or "://" not in bucket
                               or bucket.split("://", 1)[0] not in BUCKET_SCHEMES or not bucket.split("://", 1)[1].strip("/")
                               or "@" in bucket or ".." in bucket.split("/")):
        errors.append(f"{where}.bucket_url: must be the bucket Braze exports to, like s3://my-bucket "
                      f"(schemes {list(BUCKET_SCHEMES)}; the connection goes in bucket_conn_id), got {bucket!r}")
    if opts["callback_base_url"] is not None and (problem := check_base_url(opts["callback_base_url"])):
        errors.append(f"{where}.callback_base_url: {problem}, got {_shown_url(opts['callback_base_url'])!r}")
    if not isinstance(opts["bucket_conn_id"], str) or not opts["bucket_conn_id"]:
        errors.append(f"{where}.bucket_conn_id: must be a non-empty string")
    share = opts["max_rejected_share"]
    if not isinstance(share, int | float) or isinstance(share, bool) or not 0 <= share <= 1:
        errors.append(f"{where}.max_rejected_share: must be a number between 0 and 1, got {share!r}")
    if not isinstance(opts["manifest"], bool):
        errors.append(f"{where}.manifest: must be true or false")
    remote_dir = opts["remote_dir"]
    if not isinstance(remote_dir, str) or not remote_dir.startswith("/"):
        errors.append(f"{where}.remote_dir: must be an absolute remote path like /upload, got {remote_dir!r}")
    elif problem := path_trick(remote_dir):
        errors.append(f"{where}.remote_dir: {remote_dir!r} {problem}")

    id_field = entry.get("id_field", "external_id" if opts["source"] == "api" else "user_id")
    if not isinstance(id_field, str) or not id_field.strip():
        errors.append(f"{where}.id_field: must be a field name, got {id_field!r}")

    columns = entry.get("columns")
    if not isinstance(columns, dict) or not columns:
        errors.append(f"{where}.columns: must be a non-empty mapping of CSV column -> source field path")
        columns = {}
    # Dashboard CSV headers are taken literally ("Braze ID"); API fields are dotted paths.
    field_ok = (lambda f: bool(f.strip())) if opts["source"] == "drop" else _FIELD_RE.match
    for col, src in columns.items():
        if not isinstance(col, str) or not col.strip():
            errors.append(f"{where}.columns: column names must be non-empty strings, got {col!r}")
        if not isinstance(src, str) or not field_ok(src):
            errors.append(
                f"{where}.columns.{col}: must be a source field path like 'email' or "
                f"'custom_attributes.tier', got {src!r}"
            )
    if columns and isinstance(id_field, str) and id_field not in columns.values():
        errors.append(
            f"{where}.columns: the id field {id_field!r} is not mapped to any column; Lytics needs it in "
            f"the file (add e.g. `user_id: {id_field}`), or set id_field"
        )
    if isinstance(opts["timestamp_column"], str) and opts["timestamp_column"] in columns:
        errors.append(
            f"{where}.timestamp_column: {opts['timestamp_column']!r} is also a mapped column; "
            f"rename one of them"
        )

    file_root = entry.get("file_root", name)
    if not isinstance(file_root, str) or not _FILE_ROOT_RE.match(file_root):
        errors.append(
            f"{where}.file_root: {file_root!r} must be a plain file name root (letters, digits, '_', '-', '.'); "
            f"the date and extension are added for you"
        )

    fields = entry.get("fields_to_export")
    if fields is None:
        # Braze exports whole top-level fields; derive them from what the columns use.
        wanted = [id_field] + [src.split(".", 1)[0] for src in columns.values() if isinstance(src, str)]
        fields = list(dict.fromkeys(w for w in wanted if isinstance(w, str)))
    elif not isinstance(fields, list) or not fields or not all(isinstance(f, str) and f for f in fields):
        errors.append(f"{where}.fields_to_export: must be a non-empty list of Braze field names")
        fields = []
    elif opts["source"] == "api" and isinstance(id_field, str) and id_field.split(".", 1)[0] not in fields:
        errors.append(f"{where}.fields_to_export: must include the id field {id_field!r}")

    pgp = _parse_pgp(entry.get("pgp"), f"{where}.pgp", errors)
    drop = _parse_drop(entry.get("drop"), opts["source"], f"{where}.drop", errors)

    if len(errors) > n_errors:
        return None
    return SegmentConfig(
        name=name,
        segment_id=segment_id,
        columns={str(k): v for k, v in columns.items()},
        id_field=id_field,
        file_root=file_root,
        fields_to_export=tuple(fields),
        drop=drop,
        pgp=pgp,
        **{k: opts[k] for k in _DEFAULTS},
    )


def _parse_pgp(raw: Any, where: str, errors: list[str]) -> PgpOptions:
    if raw is None:
        return PgpOptions()
    if not isinstance(raw, dict):
        errors.append(f"{where}: must be a mapping with decrypt_conn_id / encrypt_conn_id")
        return PgpOptions()
    unknown_keys(raw, _PGP_KEYS, f"{where}.", errors)
    for key in ("decrypt_conn_id", "encrypt_conn_id"):
        if raw.get(key) is not None and (not isinstance(raw[key], str) or not raw[key]):
            errors.append(f"{where}.{key}: must be a connection id string")
    if not isinstance(raw.get("compress", True), bool):
        errors.append(f"{where}.compress: must be true or false")
    return PgpOptions(**{k: raw[k] for k in _PGP_KEYS if k in raw})


def _parse_drop(raw: Any, source: str, where: str, errors: list[str]) -> DropSource | None:
    if source != "drop":
        if raw is not None:
            errors.append(f"{where}: only used with source: drop")
        return None
    if not isinstance(raw, dict) or not isinstance(raw.get("path"), str) or not raw["path"]:
        errors.append(f"{where}.path: source 'drop' needs drop.path, the directory the export is dropped in")
        return None
    unknown_keys(raw, _DROP_KEYS, f"{where}.", errors)
    try:  # the path is filled in with str.format at run time: it must format with exactly these names
        filled = raw["path"].format(**{p.strip("{}"): "x" for p in _DROP_PLACEHOLDERS})
    except (ValueError, KeyError, IndexError, AttributeError) as exc:
        errors.append(f"{where}.path: {raw['path']!r} has a placeholder that does not parse ({type(exc).__name__}: "
                      f"{exc}); allowed: {list(_DROP_PLACEHOLDERS)} (write a literal brace as {{{{ or }}}})")
    else:
        if not raw.get("conn_id") and not filled.startswith("/"):
            errors.append(f"{where}.path: {raw['path']!r} must be an absolute directory (a relative one would "
                          f"depend on each worker's current directory)")
    if raw.get("conn_id") is not None and (not isinstance(raw["conn_id"], str) or not raw["conn_id"]):
        errors.append(f"{where}.conn_id: must be the id of an SFTP connection, got {raw['conn_id']!r}")
    if problem := path_trick(raw["path"]):
        errors.append(f"{where}.path: {raw['path']!r} {problem}")
    if "pattern" in raw and (not isinstance(raw["pattern"], str) or not raw["pattern"]):
        errors.append(f"{where}.pattern: must be a glob like '*.zip'")
    elif "pattern" in raw and ("/" in raw["pattern"] or "\\" in raw["pattern"] or raw["pattern"].startswith(".")):
        errors.append(f"{where}.pattern: {raw['pattern']!r} must match file names in drop.path: no '/', no "
                      f"backslash, no leading '.' (hidden files are never picked)")
    return DropSource(**{k: raw[k] for k in _DROP_KEYS if k in raw})


def _shown_url(value: Any) -> Any:
    """A configured URL for an error message, without a user:password@ part."""
    if isinstance(value, str) and "@" in value and "://" in value:
        scheme, rest = value.split("://", 1)
        return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
    return value


def _require_str(entry: dict, key: str, where: str, errors: list[str]) -> str | None:
    value = entry.get(key)
    if not isinstance(value, str) or not value.strip():
        errors.append(f"{where}.{key}: required, must be a non-empty string")
        return None
    return value
