"""Two ``llama-server`` processes as two local machines behind one ``joulegate serve``.

Each demo model runs on its own ``llama-server``; joulegate is given them as two
``[[machines]]`` (``local = true``: both are on this host, so each may use the local
meters), each with its own gate and sampler. The client is the real ``openai`` SDK.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from openai import OpenAI

from tests.e2e.conftest import GEMMA, MODEL, Joulegate

MACHINES = {"box-smol": MODEL, "box-gemma": GEMMA}


def _config(path: Path, llama_urls: dict[str, str]) -> Path:
    text = ""
    for name, model in MACHINES.items():
        text += (f'[[machines]]\nname = "{name}"\nlocal = true\n'
                 f'[[machines.backends]]\nurl = "{llama_urls[model]}"\n\n')  # fmt: skip
    path.write_text(text)
    return path


def test_two_llama_servers_are_two_machines(
    start_joulegate: Callable[..., Joulegate], llama_urls: dict[str, str], tmp_path: Path
) -> None:
    config = _config(tmp_path / "machines.toml", llama_urls)
    jg = start_joulegate(JOULEGATE_CONFIG=str(config), JOULEGATE_BACKENDS="")
    client = OpenAI(base_url=jg.base_url, api_key="unused", max_retries=0)

    def ask(model: str) -> tuple[str, str, float | None]:
        raw = client.chat.completions.with_raw_response.create(
            model=model, messages=[{"role": "user", "content": "Say hi."}], max_tokens=8
        )
        body = json.loads(raw.text)
        return model, raw.headers["x-joulegate-machine"], body["energy"]["energy_j"]

    with ThreadPoolExecutor(4) as pool:  # both machines at work at once
        answers = list(pool.map(ask, [MODEL, GEMMA, MODEL, GEMMA]))
    for model, machine, energy_j in answers:
        assert MACHINES[machine] == model
        assert energy_j is not None and energy_j > 0
    ready = httpx.get(jg.url + "/readyz", timeout=30).json()
    meters = sorted(ch["machine"] for ch in ready["checks"] if ch["name"] == "meters")
    assert meters == sorted(MACHINES)
    listed = sorted(m.id for m in client.models.list())
    assert MODEL in listed and GEMMA in listed
    done = jg.cli("report", "--by", "machine", "--unit", "J", "--format", "json")
    assert done.returncode == 0, done.stderr
    groups = {g["machine"]: g["requests"] for g in json.loads(done.stdout)["groups"]}
    assert groups == {"box-smol": 2, "box-gemma": 2}
