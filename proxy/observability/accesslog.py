"""One log line per proxied request, and the log formats joulegate writes.

uvicorn's access log is off (it knows neither the user nor the energy), so the
access-log stage writes the line instead, in ``on_closed``: by then the status
is final and the meters and carbon stages have added their figures. It sits
before the auth stage in the pipeline so that refused requests (401, 429) get
their line too. Each line is logged on ``joulegate.access`` at info level with
these fields (``-`` when not known)::

    POST /v1/chat/completions 200 user=alice model=smollm2 queue_ms=0.1
    duration_ms=812.4 energy_j=41.73 meter=nvml+rapl failure=- request_id=…

The path is the canonical one (no query string), the user is joulegate's name
for the caller: never a key, a header or any content. Values a client chose
(the model, a ``trust``-mode user) are quoted when they hold spaces, quotes or
control characters, so one request is always one line.

``log_format = "json"`` makes every log line of the process a JSON object
(:class:`JsonFormatter`); access lines then carry the fields as keys, with
``null`` for what is not known.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
from collections.abc import AsyncIterator
from typing import IO, Any, Literal

from proxy.context import AppContext
from proxy.exchange import Exchange, Stage
from proxy.figures import FIGURES

ACCESS_LOGGER = "joulegate.access"
FIELDS_ATTR = "joulegate_access"
"""The log record attribute that holds an access line's fields."""
LogFormat = Literal["text", "json"]
_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def access_fields(ex: Exchange) -> dict[str, Any]:
    """What the access line says about ``ex`` (None: not known)."""
    w = ex.window
    return {
        "method": ex.method,
        "path": ex.path,
        "status": ex.status,
        "user": ex.user,
        "model": ex.model_served or ex.model_requested,
        "queue_ms": round(w.queue_s * 1000.0, 1),
        "duration_ms": None if w.duration_s is None else round(w.duration_s * 1000.0, 1),
        **{name: _access_value(ex, record, attr) for record, attr, name in _FIGURES},
        "failure": ex.failure,
        "request_id": ex.request_id,
    }


_FIGURES = tuple((f.record, f.attr, f.access) for f in FIGURES if f.access is not None)
"""The figures the line shows (:data:`proxy.figures.FIGURES`): (record, attribute, field)."""


def _access_value(ex: Exchange, record: str, attr: str) -> Any:
    figures = getattr(ex, record)
    value = None if figures is None else getattr(figures, attr)
    return round(value, 6) if isinstance(value, float) else value


def _text_value(value: Any) -> str:
    if value is None:
        return "-"
    text = str(value)
    if not text or any(c.isspace() or c in "\"'=\\" or not c.isprintable() for c in text):
        return json.dumps(text)
    return text


def access_line(fields: dict[str, Any]) -> str:
    """The text form: method, path and status, then ``key=value`` pairs."""
    head = " ".join(_text_value(fields[k]) for k in ("method", "path", "status"))
    rest = " ".join(
        f"{k}={_text_value(v)}" for k, v in fields.items() if k not in ("method", "path", "status")
    )
    return f"{head} {rest}"


class AccessLogStage(Stage):
    """Logs one line per request once it is closed (refusals included)."""

    name = "access_log"

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self._log = logger or logging.getLogger(ACCESS_LOGGER)

    async def on_closed(self, ex: Exchange) -> None:
        """Write the request's line."""
        if not self._log.isEnabledFor(logging.INFO):
            return
        fields = access_fields(ex)
        self._log.info(access_line(fields), extra={FIELDS_ATTR: fields})


@contextlib.asynccontextmanager
async def access_log_component(ctx: AppContext) -> AsyncIterator[Stage]:
    """The access-log stage (it needs no resources)."""
    yield AccessLogStage()


class JsonFormatter(logging.Formatter):
    """Each record as one JSON object: ``ts`` (UTC), ``level``, ``logger``, ``message``,
    the access fields for access lines, ``exc_info`` for a traceback."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as a JSON line (without the newline)."""
        out: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        fields = getattr(record, FIELDS_ATTR, None)
        if isinstance(fields, dict):
            out |= fields
        else:
            out["message"] = record.getMessage()
        if record.exc_info:
            out["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)


def log_handler(form: LogFormat, stream: IO[str]) -> logging.Handler:
    """A handler writing ``form`` lines to ``stream``."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if form == "json" else logging.Formatter(_TEXT_FORMAT))
    return handler
