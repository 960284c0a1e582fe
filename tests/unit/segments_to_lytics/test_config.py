"""The configuration file: valid files load; each mistake is named by file, key and problem."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from include.common.errors import ConfigError
from include.common.settings import DEFAULT_CONFIG_PATH
from include.segments_to_lytics.config import load_config

GOOD = """
defaults:
  remote_dir: /upload
segments:
  - name: vip
    segment_id: abc-123
    columns: {user_id: external_id, email: email, tier: custom_attributes.tier}
  - name: dashboard
    segment_id: def-456
    source: drop
    drop: {path: "/landing/{segment_id}/{ds}", pattern: "*.zip"}
    compression: gzip
    pgp: {encrypt_conn_id: lytics_pgp}
    columns: {user_id: user_id, email: email}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "pipeline.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_valid_file_loads_with_defaults_and_derived_fields(tmp_path):
    cfg = load_config(write(tmp_path, GOOD))
    vip, dash = cfg.segments
    assert vip.fields_to_export == ("external_id", "email", "custom_attributes")
    assert vip.id_field == "external_id" and dash.id_field == "user_id"
    assert vip.file_root == "vip"
    assert vip.remote_path("20261123") == "/upload/vip_20261123.csv"
    assert dash.remote_path("20261123") == "/upload/dashboard_20261123.csv.gz.pgp"
    assert dash.drop.directory_for(segment_id="def-456", name="dashboard", ds="2026-11-23") == "/landing/def-456/2026-11-23"
    assert list(vip.columns) == ["user_id", "email", "tier"]  # header order is the file's order


def test_segment_round_trips_through_xcom_dict(tmp_path):
    from include.segments_to_lytics.config import SegmentConfig

    for seg in load_config(write(tmp_path, GOOD)).segments:
        assert SegmentConfig.from_dict(seg.to_dict()) == seg


def test_shipped_default_config_is_valid():
    assert load_config(DEFAULT_CONFIG_PATH).segments


def test_env_var_selects_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("BRAZE_LYTICS_CONFIG", str(write(tmp_path, GOOD)))
    assert [s.name for s in load_config().segments] == ["vip", "dashboard"]


@pytest.mark.parametrize(
    ("snippet", "expected"),
    [
        ("compresion: gzip", "segments[0] (vip).compresion: unknown key (did you mean 'compression'?)"),
        ("compression: bzip2", "segments[0] (vip).compression: 'bzip2' is not one of ['none', 'gzip', 'zip']"),
        ("remote_dir: upload", "segments[0] (vip).remote_dir: must be an absolute remote path"),
        ("max_rejected_share: 5", "segments[0] (vip).max_rejected_share: must be a number between 0 and 1"),
        ("file_root: a/b", "segments[0] (vip).file_root: 'a/b' must be a plain file name root"),
        ("source: drop", "segments[0] (vip).drop.path: source 'drop' needs drop.path"),
        ("fields_to_export: [email]", "segments[0] (vip).fields_to_export: must include the id field 'external_id'"),
        ("id_field: email_address", "segments[0] (vip).columns: the id field 'email_address' is not mapped"),
        ("timestamp_column: email", "segments[0] (vip).timestamp_column: 'email' is also a mapped column"),
    ],
)
def test_each_mistake_is_reported_with_file_key_and_problem(tmp_path, snippet, expected):
    text = f"""
    segments:
      - name: vip
        segment_id: abc
        {snippet}
        columns: {{user_id: external_id, email: email}}
    """
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(path) in str(err.value)
    assert expected in str(err.value)


def test_all_problems_are_listed_at_once(tmp_path):
    path = write(tmp_path, """
    segments:
      - name: Bad Name
        columns: {user_id: 5}
      - name: ok
        segment_id: x
        columns: {user_id: external_id}
      - name: ok
        segment_id: y
        columns: {user_id: external_id}
    """)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert "segments[0] (Bad Name).name: 'Bad Name' must be lowercase" in msg
    assert "segments[0] (Bad Name).segment_id: required" in msg
    assert "segments[0] (Bad Name).columns.user_id: must be a source field path" in msg
    assert "segments[2] (ok).name: duplicate segment name 'ok'" in msg


def test_two_segments_writing_the_same_remote_file_are_refused(tmp_path):
    path = write(tmp_path, """
    segments:
      - {name: a, segment_id: x, file_root: users, columns: {user_id: external_id}}
      - {name: b, segment_id: y, file_root: users, columns: {user_id: external_id}}
    """)
    with pytest.raises(ConfigError, match=r"/upload/users_YYYYMMDD.csv is also written by segment 'a'"):
        load_config(path)


def test_missing_and_unparsable_files_say_how_to_fix(tmp_path):
    with pytest.raises(ConfigError, match="configuration file not found; set BRAZE_LYTICS_CONFIG"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "segments: [unclosed"))


def test_selecting_unknown_segment_names_is_refused(tmp_path):
    cfg = load_config(write(tmp_path, GOOD))
    assert [s.name for s in cfg.select(["dashboard"])] == ["dashboard"]
    assert len(cfg.select([])) == 2
    with pytest.raises(ConfigError, match=r"unknown segment name\(s\) \['nope'\]"):
        cfg.select(["nope"])


def test_the_column_order_survives_an_xcom_store_that_reorders_keys(tmp_path):
    """PostgreSQL keeps XCom as JSONB (keys re-ordered); the CSV header must keep the configured order."""
    import json

    from include.segments_to_lytics.config import SegmentConfig, load_config

    path = tmp_path / "p.yaml"
    path.write_text(json.dumps({"segments": [{"name": "vip", "segment_id": "s1", "file_root": "vip", "columns": {
        "braze_id": "external_id", "email": "email", "city": "city", "loyalty_points": "custom_attributes.points",
        "tier": "custom_attributes.tier"}}]}))
    segment = load_config(path).segments[0]
    through_jsonb = json.loads(json.dumps(segment.to_dict(), sort_keys=True))  # any key order at all
    assert list(SegmentConfig.from_dict(through_jsonb).columns) == ["braze_id", "email", "city", "loyalty_points",
                                                                     "tier"]
    assert SegmentConfig.from_dict(through_jsonb) == segment
