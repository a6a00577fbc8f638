"""In-process fakes of the live carbon APIs (raw ASGI): Electricity Maps and the UK's.

One instance answers both APIs' routes; a test steers it through attributes:

``mode``  ``ok``, ``hang`` (answer after ``hang_s``), ``status`` (answer
          ``status`` with an error body) or ``garbage`` (200 with a body that is
          not JSON)
``em_key``  the only ``auth-token`` Electricity Maps accepts (else 401)

It records each request's path, query and headers in ``seen``.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any


@dataclass
class FakeCarbonApi:
    """Electricity Maps' ``/v3/carbon-intensity/latest`` and the UK API's ``/intensity``."""

    em_key: str = "em-secret-key-123"
    em_intensity: Any = 302
    uk_actual: Any = 180
    uk_forecast: Any = 190
    mode: str = "ok"
    status: int = 500
    hang_s: float = 0.3
    url: str = ""
    """Set by the fixture that serves it."""
    seen: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """ASGI entry point."""
        assert scope["type"] == "http"
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        query = scope["query_string"].decode()
        self.seen.append((scope["path"], query, headers))
        if self.mode == "hang":
            await asyncio.sleep(self.hang_s)
        if self.mode == "status":
            await _send(send, self.status, b'{"error": "fake failure"}')
        elif self.mode == "garbage":
            await _send(send, 200, b"<html>not json</html>")
        elif scope["path"] == "/v3/carbon-intensity/latest":
            if headers.get("auth-token") != self.em_key:
                await _send(send, 401, b'{"message": "invalid auth-token"}')
                return
            zone = query.removeprefix("zone=")
            body = {"zone": zone, "carbonIntensity": self.em_intensity,
                    "datetime": "2026-01-01T12:00:00.000Z", "emissionFactorType": "lifecycle",
                    "isEstimated": True}  # fmt: skip
            await _send(send, 200, json.dumps(body).encode())
        elif scope["path"] == "/intensity":
            reading = {"forecast": self.uk_forecast, "actual": self.uk_actual, "index": "moderate"}
            body = {"data": [{"from": "2026-01-01T12:00Z", "to": "2026-01-01T12:30Z",
                              "intensity": reading}]}  # fmt: skip
            await _send(send, 200, json.dumps(body).encode())
        else:
            await _send(send, 404, b'{"error": "no route"}')


async def _send(send: Any, status: int, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body})
