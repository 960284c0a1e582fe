"""The `lytics_to_braze:` configuration section: defaults, limits, precise errors."""

from __future__ import annotations

import textwrap

import pytest

from include.audiences_to_braze.config import load_audience_config
from include.common.errors import ConfigError
from include.segments_to_lytics.config import load_config


def write(tmp_path, text):
    path = tmp_path / "p.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_defaults_and_slug_shorthand(tmp_path):
    cfg = load_audience_config(write(tmp_path, """
        lytics_to_braze:
          audiences: [vip, {slug: churn_risk, id: 4f2a}]
    """))
    assert [(a.slug, a.id) for a in cfg.audiences] == [("vip", "vip"), ("churn_risk", "4f2a")]
    assert (cfg.id_field, cfg.attribute, cfg.batch_size, cfg.existing_users) == ("braze_id", "lytics_segments", 75, True)
    assert (cfg.rate_limit_requests, cfg.rate_limit_seconds, cfg.lytics_conn_id) == (3000, 3.0, "lytics_default")


@pytest.mark.parametrize(("snippet", "message"), [
    ("batch_size: 76", "lytics_to_braze.batch_size: must be 1..75 (Braze's hard limit; 50 for MAU-plan workspaces)"),
    ("scan_page_size: 500", "lytics_to_braze.scan_page_size: must be 1..100"),
    ("existing_user: true", "lytics_to_braze.existing_user: unknown key"),
    ("max_chunks: 0", "lytics_to_braze.max_chunks: must be a positive integer"),
    ("park_after_runs: 0", "lytics_to_braze.park_after_runs: must be a positive integer"),
    ("prune_after_days: -1", "lytics_to_braze.prune_after_days: must be a number of days above 0"),
    ("retire: old_audience", "lytics_to_braze.retire: must be a list of audience slugs"),
    ("retire: [vip]", "lytics_to_braze.retire: ['vip'] are still listed under audiences"),
    ("drift_sample_size: 0", "lytics_to_braze.drift_sample_size: must be a positive integer"),
])
def test_mistakes_are_named_precisely(tmp_path, snippet, message):
    path = write(tmp_path, f"""
        lytics_to_braze:
          {snippet}
          audiences: [vip]
    """)
    with pytest.raises(ConfigError) as err:
        load_audience_config(path)
    assert str(path) in str(err.value) and message in str(err.value)


def test_duplicate_and_missing_audiences(tmp_path):
    with pytest.raises(ConfigError, match=r"audiences\[1\].slug: duplicate audience 'vip'"):
        load_audience_config(write(tmp_path, "lytics_to_braze:\n  audiences: [vip, vip]\n"))
    with pytest.raises(ConfigError, match="no 'lytics_to_braze:' section"):
        load_audience_config(write(tmp_path, "segments: []\n"))


def test_subset_selection(tmp_path):
    cfg = load_audience_config(write(tmp_path, "lytics_to_braze:\n  audiences: [a, b]\n"))
    assert [a.slug for a in cfg.select(["b"])] == ["b"]
    with pytest.raises(ConfigError, match=r"unknown audience\(s\) \['c'\]"):
        cfg.select(["c"])


def test_a_file_with_only_the_audience_section_is_valid_for_both_loaders(tmp_path):
    path = write(tmp_path, "lytics_to_braze:\n  audiences: [a]\n")
    assert load_config(path).segments == ()
    assert load_audience_config(path).audiences


def test_shipped_default_config_has_a_valid_audience_section():
    from include.common.settings import DEFAULT_CONFIG_PATH

    cfg = load_audience_config(DEFAULT_CONFIG_PATH)
    assert [a.slug for a in cfg.audiences] == ["high_value", "churn_risk"]


def test_retire_and_housekeeping_settings_survive_the_frozen_copy(tmp_path):
    from include.audiences_to_braze.config import AudienceSyncConfig

    cfg = load_audience_config(write(tmp_path, """
        lytics_to_braze:
          audiences: [vip]
          retire: [old_one, older]
          park_after_runs: 5
          prune_after_days: 2.5
    """))
    assert (cfg.retire, cfg.park_after_runs, cfg.prune_after_days) == (("old_one", "older"), 5, 2.5)
    assert AudienceSyncConfig.from_dict(cfg.to_dict()) == cfg  # what later tasks of the run see
