"""Path tricks are refused when the configuration is loaded, naming the key: '..' and absolute paths in
remote dirs, drop paths and patterns, segment ids (they name drop and bucket folders), file roots,
segment names, audience slugs (they name state folders), the state URL, and state store keys.

Every case loads a real pipeline file (YAML on disk) through the loaders the DAGs use.
"""

from __future__ import annotations

import json

import pytest

from include.audiences_to_braze.config import load_audience_config
from include.clients.state_store import StateStore
from include.common.errors import ConfigError
from include.segments_to_lytics.config import load_config

COLUMNS = {"user_id": "external_id"}


def segments_file(tmp_path, **overrides) -> str:
    segment = {"name": "vip", "segment_id": "seg-1", "columns": COLUMNS, **overrides}
    path = tmp_path / "pipeline.yaml"
    path.write_text(json.dumps({"segments": [segment]}))
    return str(path)


def drop_file(tmp_path, **drop) -> str:
    return segments_file(tmp_path, source="drop", columns={"user_id": "user_id"},
                         drop={"path": "/landing/{segment_id}", **drop})


def audiences_file(tmp_path, audiences=("vip",), **settings) -> str:
    path = tmp_path / "pipeline.yaml"
    path.write_text(json.dumps({"lytics_to_braze": {"audiences": list(audiences), **settings}}))
    return str(path)


def refused(load, path: str, key: str) -> str:
    """The ConfigError message of loading `path`; it must name the file and the key."""
    with pytest.raises(ConfigError) as err:
        load(path)
    message = str(err.value)
    assert message.startswith(f"{path}: invalid configuration")
    assert key in message, message
    return message


def test_sane_values_load(tmp_path):
    assert load_config(segments_file(tmp_path, remote_dir="/upload/lytics", file_root="users.v2",
                                     segment_id="3d6e4f4b-0a1c-4c5e-9b1e-2f6f8f0e1a2b")).segments
    assert load_config(drop_file(tmp_path, path="/srv/drops/{segment_id}/{ds}", pattern="users-*.zip")).segments
    assert load_audience_config(audiences_file(tmp_path, ["vip", "a.b-c_d"], state_url="s3://bucket/pre/fix"))


@pytest.mark.parametrize("remote_dir", ["/upload/../etc", "/upload/..", "/../root", "/upload/./x", "/up\\..\\x",
                                        "/upload\x00/x", "upload", "../upload", "~/upload", ""])
def test_remote_dir(tmp_path, remote_dir):
    refused(load_config, segments_file(tmp_path, remote_dir=remote_dir), "segments[0] (vip).remote_dir")


def test_remote_dir_in_defaults(tmp_path):
    path = tmp_path / "pipeline.yaml"
    path.write_text(json.dumps({"defaults": {"remote_dir": "/upload/../../etc"},
                                "segments": [{"name": "vip", "segment_id": "s", "columns": COLUMNS}]}))
    refused(load_config, str(path), "segments[0] (vip).remote_dir")


@pytest.mark.parametrize("drop_path", ["/landing/../../etc", "../landing", "/landing/{ds}/..", "/landing/./x",
                                       "C:\\landing", "/landing\n/x"])
def test_drop_path(tmp_path, drop_path):
    refused(load_config, drop_file(tmp_path, path=drop_path), "segments[0] (vip).drop.path")


@pytest.mark.parametrize("pattern", ["../*.zip", "/etc/*", "sub/*.zip", "..\\*", ".*"])
def test_drop_pattern(tmp_path, pattern):
    refused(load_config, drop_file(tmp_path, pattern=pattern), "segments[0] (vip).drop.pattern")


@pytest.mark.parametrize("segment_id", ["../../etc", "/etc/passwd", "a/b", "..", ".hidden", "a\\b", "seg 1",
                                        "seg\n1", "~root"])
def test_segment_id_used_in_paths(tmp_path, segment_id):
    # The id fills {segment_id} of drop.path and names the bucket export's folder.
    path = tmp_path / "pipeline.yaml"
    path.write_text(json.dumps({"segments": [
        {"name": "vip", "segment_id": segment_id, "columns": COLUMNS},
        {"name": "dropped", "segment_id": segment_id, "source": "drop", "columns": {"user_id": "user_id"},
         "drop": {"path": "/landing/{segment_id}/{ds}"}},
    ]}))
    message = refused(load_config, str(path), "segments[0] (vip).segment_id")
    assert "segments[1] (dropped).segment_id" in message


@pytest.mark.parametrize("file_root", ["../x", "/etc/cron.d/x", "a/b", "..", ".hidden", "a\\b", "x\x00"])
def test_file_root(tmp_path, file_root):
    refused(load_config, segments_file(tmp_path, file_root=file_root), "segments[0] (vip).file_root")


@pytest.mark.parametrize("name", ["../x", "/x", "a/b", "..", "Vip"])
def test_segment_name_names_the_quarantine_folder(tmp_path, name):
    refused(load_config, segments_file(tmp_path, name=name), ".name:")


@pytest.mark.parametrize("slug", ["../x", "/abs", "a/b", "..", ".hidden", "a\\b", "x\x00", ""])
def test_audience_slug(tmp_path, slug):
    refused(load_audience_config, audiences_file(tmp_path, [{"slug": slug, "id": "a1"}]),
            "lytics_to_braze.audiences[0].slug")


@pytest.mark.parametrize("slug", ["../x", "/abs", "a/b"])
def test_retired_slug(tmp_path, slug):
    refused(load_audience_config, audiences_file(tmp_path, ["vip"], retire=[slug]), "lytics_to_braze.retire")


@pytest.mark.parametrize("url", ["/srv/state/../../etc", "../state", "s3://bucket/../other", "file:///srv/./state",
                                 "/srv/state\x00"])
def test_state_url(tmp_path, url):
    refused(load_audience_config, audiences_file(tmp_path, state_url=url), "lytics_to_braze.state_url")


@pytest.mark.parametrize("key", ["../x", "a/../../x", "/etc/passwd", "a//b", "./a", "a\\b", "C:x", "a/\x00", ""])
def test_state_store_keys(tmp_path, key):
    store = StateStore(str(tmp_path / "state"))
    for call in (lambda: store.write_bytes(key, b"x"), lambda: store.read_bytes(key), lambda: store.delete(key),
                 lambda: store.exists(key), lambda: store.list(key or "/x/../y")):
        with pytest.raises(ConfigError) as err:
            call()
        assert str(err.value).startswith("state key")
        assert repr(key or "/x/../y") in str(err.value) or not key
    assert not (tmp_path / "x").exists() and not (tmp_path / "state").exists()


def test_run_params_cannot_smuggle_paths(tmp_path):
    """Run-time inputs are matched against the configuration or made file-safe: never used as paths."""
    from include.audiences_to_braze.run_files import run_key_for
    from include.audiences_to_braze.snapshot import audience_prefix

    config = load_audience_config(audiences_file(tmp_path, ["vip"]))
    with pytest.raises(ConfigError, match="unknown audience"):
        config.select(["../../etc"])
    segments = load_config(segments_file(tmp_path))
    with pytest.raises(ConfigError, match="unknown segment name"):
        segments.select(["../vip"])
    assert "/" not in run_key_for("manual__../../etc/passwd") and not run_key_for("../x").startswith(".")
    with pytest.raises(Exception, match="cannot name state files"):
        audience_prefix("../x")
