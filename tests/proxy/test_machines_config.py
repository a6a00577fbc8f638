"""``[[machines]]`` in joulegate.toml, and the single machine without it."""

from __future__ import annotations

from pathlib import Path

import pytest

from config import ConfigError, Settings, load_settings

TWO = """
[[machines]]
name = "rack1-a"
max_concurrency = 1
cooldown_s = 30
cooldown_every = 50
[machines.meters]
kinds = ["shelly"]
plug_url = "http://10.0.0.21"
[[machines.backends]]
url = "http://10.0.0.11:8080"

[[machines]]
name = "rack1-b"
max_concurrency = 2
[machines.meters]
prometheus_url = "http://10.0.0.22:9100/metrics"
prometheus_metric = "node_rapl_package_joules_total"
prometheus_unit = "J"
[[machines.backends]]
url = "http://10.0.0.12:8080"
models = ["m"]
"""


def _load(tmp_path: Path, text: str) -> Settings:
    cfg = tmp_path / "joulegate.toml"
    cfg.write_text(text)
    return load_settings(cfg, env={})


def test_machines_load_from_the_toml_file(tmp_path: Path) -> None:
    s = _load(tmp_path, TWO)
    a, b = s.machine_list
    assert (a.name, a.meters.kinds, a.cooldown_s, a.cooldown_every) == (
        "rack1-a",
        ("shelly",),
        30,
        50,
    )
    assert b.remote_kinds == ("prometheus",) and b.backends[0].models == ("m",)
    assert s.max_slots == 3 and s.shared_windows
    assert [x.url for x in s.backend_list] == ["http://10.0.0.11:8080", "http://10.0.0.12:8080"]


def test_without_machines_the_old_keys_are_one_local_machine() -> None:
    s = Settings(backend_url="http://127.0.0.1:9000", max_concurrency=3, max_queue=7)
    (local,) = s.machine_list
    assert (local.name, local.local, local.max_concurrency, local.max_queue) == (
        "local",
        True,
        3,
        7,
    )
    assert local.backends[0].url == "http://127.0.0.1:9000" and local.meters == s.meters


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ('[machines.meters]\nkinds = ["rapl"]\n', "'machines.meters.kinds'.*not local"),
        ("[machines.meters]\nipmi = true\n", "'machines.meters.ipmi_host'"),
        ("cooldown_s = -1\n", "'machines.cooldown_s'"),
        ("max_concurrency = 0\n", "'machines.max_concurrency'"),
    ],
)
def test_bad_machine_settings_name_the_key(tmp_path: Path, extra: str, message: str) -> None:
    text = '[[machines]]\nname = "x"\n' + extra + '[[machines.backends]]\nurl = "http://h:1"\n'
    with pytest.raises(ConfigError, match=message):
        _load(tmp_path, text)


def test_a_local_machine_may_use_the_local_meters(tmp_path: Path) -> None:
    text = '[[machines]]\nname = "x"\nlocal = true\n[machines.meters]\nkinds = ["rapl"]\n'
    s = _load(tmp_path, text + '[[machines.backends]]\nurl = "http://h:1"\n')
    assert s.machine_list[0].meters.kinds == ("rapl",)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (TWO.replace('"rack1-b"', '"rack1-a"'), "distinct names"),
        (TWO + '[[backends]]\nurl = "http://h:1"\n', "'backends'.*machines.backends"),
        ("[meters]\nsample_hz = 20\n" + TWO, "'meters'.*machines.meters"),
        ('[[machines]]\nname = "no backends"\n', "'machines.name'"),
        ('[[machines]]\nname = "x"\n', "'machines.backends'"),
    ],
)
def test_machines_and_the_single_machine_keys_do_not_mix(
    tmp_path: Path, text: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        _load(tmp_path, text)


def test_the_guides_example_loads(tmp_path: Path) -> None:
    page = (Path(__file__).resolve().parents[2] / "docs" / "guides" / "machines.md").read_text()
    example = page.split("```toml\n", 1)[1].split("```", 1)[0]
    a, b = _load(tmp_path, example).machine_list
    assert (a.name, a.cooldown_every, b.meters.thermal_limit_c) == ("rack1-a", 200, 85.0)
