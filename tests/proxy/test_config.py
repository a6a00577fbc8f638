"""Settings: TOML, then environment, then CLI; bad input names the key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from config import ConfigError, load_settings, settings_table
from config.__main__ import table

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "joulegate.toml"
    p.write_text(text)
    return p


def test_defaults_match_the_documented_ones() -> None:
    s = load_settings(env={})
    assert (s.host, s.port, s.max_concurrency, s.max_queue) == ("127.0.0.1", 8400, 1, 256)
    assert s.max_body_bytes == 16 * 1024 * 1024


def test_environment_overrides_file_and_cli_overrides_environment(tmp_path: Path) -> None:
    cfg = write(
        tmp_path,
        'backend_url = "http://10.0.0.1:1"\nmax_concurrency = 2\n'
        '[carbon]\nprovider = "static"\nintensity_g_per_kwh = 100\n',
    )
    s = load_settings(
        cfg,
        env={"JOULEGATE_MAX_CONCURRENCY": "3", "JOULEGATE_CARBON_INTENSITY_G_PER_KWH": "250.5"},
        overrides={"max_concurrency": "4"},
    )
    assert s.backend_url == "http://10.0.0.1:1"
    assert s.max_concurrency == 4
    assert s.carbon.provider == "static"
    assert s.carbon.intensity_g_per_kwh == 250.5


def test_config_file_named_by_environment(tmp_path: Path) -> None:
    cfg = write(tmp_path, "port = 9001\n")
    assert load_settings(env={"JOULEGATE_CONFIG": str(cfg)}).port == 9001


def test_lists_come_from_comma_separated_environment_values() -> None:
    s = load_settings(env={"JOULEGATE_GATED_PATHS": "/v1/audio/speech, /v1/rerank"})
    assert s.gated_paths == ("/v1/audio/speech", "/v1/rerank")
    assert load_settings(env={"JOULEGATE_METERS_GPU_INDICES": "0, 2"}).meters.gpu_indices == (0, 2)


@pytest.mark.parametrize(
    ("toml", "env", "needle"),
    [
        ("max_concurency = 2\n", {}, "unknown setting 'max_concurency'"),
        ("", {"JOULEGATE_MAX_CONCURENCY": "2"}, "unknown setting 'max_concurency'"),
        ("[carbon]\nprovidr = 'uk'\n", {}, "unknown setting 'carbon.providr'"),
        ("port = 'x'\n", {}, "setting 'port': 'x' is not an integer"),
        ("", {"JOULEGATE_PORT": "eighty"}, "setting 'port': 'eighty' is not an integer"),
        ("", {"JOULEGATE_MAX_CONCURRENCY": "0"}, "setting 'max_concurrency': must be between"),
        ("", {"JOULEGATE_CARBON_PROVIDER": "coal"}, "one of 'static', 'table'"),
        ("", {"JOULEGATE_OLLAMA_NATIVE": "maybe"}, "is not true or false"),
        ("backend_url = 'localhost:8080'\n", {}, "setting 'backend_url': must be an http://"),
        ("carbon = 3\n", {}, "setting 'carbon': must be a table"),
        ("[[backends]]\nurl = 5\n", {}, "setting 'backends.url': 5 is not a string"),
        ("[[backends]]\nurl = 'http://a:1'\nmodle = []\n", {}, "unknown setting 'backends.modle'"),
        ("", {"JOULEGATE_METERS_GPU_INDICES": "0,x"}, "'meters.gpu_indices': 'x' is not an"),
        ("gated_paths = ['/a', 3]\n", {}, "setting 'gated_paths': 3 is not a string"),
    ],
)
def test_bad_settings_stop_start_up_naming_the_key(
    tmp_path: Path, toml: str, env: dict[str, str], needle: str
) -> None:
    with pytest.raises(ConfigError, match=None) as info:
        load_settings(write(tmp_path, toml), env=env)
    assert needle in str(info.value)


def test_missing_or_broken_config_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "nope.toml", env={})
    with pytest.raises(ConfigError, match=r"joulegate\.toml"):
        load_settings(write(tmp_path, "port = = 3"), env={})


SETTINGS_PAGE = ROOT / "docs" / "reference" / "settings.md"


def test_every_setting_is_documented_in_the_settings_page() -> None:
    page = SETTINGS_PAGE.read_text()
    missing = [env for env, *_ in settings_table() if f"`{env}`" not in page]
    assert not missing, f"docs/reference/settings.md lacks settings: {missing}"


def test_the_settings_page_holds_the_table_the_code_makes() -> None:
    """A changed default or docstring must reach the docs: `make docs` regenerates it."""
    page = SETTINGS_PAGE.read_text()
    found = re.search(r"<!-- settings:begin -->\n(.*?)\n<!-- settings:end -->", page, re.S)
    assert found, "the settings page lost its settings:begin/end markers"
    assert found.group(1) == table(), "stale settings table: run `make docs`"
