"""joulegate's one exception tree.

Every error joulegate raises on purpose derives from :class:`JoulegateError`.
Vendor errors (``httpx``, ``pynvml``, ``sqlite3``, ``OSError`` from sysfs) are
translated into this tree at the adapter that meets them and chained with
``raise ... from exc``.

    JoulegateError
    ├── ConfigError                 bad or unknown setting; stops start-up
    ├── MeterError                  a power meter could not be read
    │   └── MeterUnavailable        the hardware or permission is absent
    │       └── MeterAbsent         no such hardware or driver here (nothing to fix)
    ├── CarbonSourceError           a carbon-intensity provider failed
    ├── LedgerError                 the ledger database could not be used
    ├── StudyError                  bad ``joulegate bench`` input (model, task, prompt file)
    ├── StudyAborted                a ``joulegate bench`` run could not finish
    └── ProxyError                  what a client sees (status + OpenAI error JSON)
        ├── BadRequest              400 invalid_request_error
        ├── Unauthorized            401 authentication_error
        ├── Forbidden               403 permission_error
        ├── NotFound                404 not_found_error
        │   └── ModelNotFound       404 invalid_request_error, code model_not_found
        ├── MethodNotAllowed        405 invalid_request_error
        ├── PayloadTooLarge         413 invalid_request_error
        ├── BudgetExceeded          429 energy_budget_exceeded
        ├── RateLimited             429 rate_limit_exceeded (the console's public playground)
        ├── InternalError           500 server_error, code internal_error
        ├── BackendUnreachable      502 backend_unreachable
        ├── QueueFull               503 queue_full
        ├── LedgerUnavailable       503 server_error, code ledger_unavailable
        └── BackendTimeout          504 backend_timeout

``ProxyError.to_json()`` gives the OpenAI-style body
``{"error": {"message", "type", "code", "param"}}`` so that the official SDKs
raise their usual exception classes.
"""

from __future__ import annotations

from typing import Any, ClassVar


class JoulegateError(Exception):
    """Base of every error joulegate raises on purpose."""


class ConfigError(JoulegateError):
    """A setting is unknown or has a bad value; the message names the key."""


class MeterError(JoulegateError):
    """A power meter failed to give a reading."""


class MeterUnavailable(MeterError):
    """The meter's hardware, driver or permission is absent on this machine."""


class MeterAbsent(MeterUnavailable):
    """The meter's hardware or driver is not on this machine (nothing to fix)."""


class CarbonSourceError(JoulegateError):
    """A carbon-intensity provider could not give a value."""


class LedgerError(JoulegateError):
    """The ledger database could not be read or written."""


class StudyError(JoulegateError):
    """``joulegate bench`` was asked for something it cannot do: an unknown model or
    task, a malformed prompt file (the message names the line), clashing flags."""


class StudyAborted(JoulegateError):
    """A ``joulegate bench`` run stopped before its end (joulegate or its backend
    failed, or it was interrupted); the finished requests are kept."""


class ProxyError(JoulegateError):
    """An error a client sees: an HTTP status and an OpenAI-style body."""

    status: ClassVar[int] = 500
    error_type: ClassVar[str] = "server_error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.param = param
        self.headers = headers or {}

    def to_json(self) -> dict[str, Any]:
        """The body OpenAI's API sends for an error."""
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "code": self.code,
                "param": self.param,
            }
        }


class BadRequest(ProxyError):
    """The request itself is invalid (malformed JSON, bad parameter)."""

    status = 400
    error_type = "invalid_request_error"


class Unauthorized(ProxyError):
    """No API key, an unknown key or a revoked one."""

    status = 401
    error_type = "authentication_error"


class Forbidden(ProxyError):
    """The key is valid but may not do this (e.g. another user's report)."""

    status = 403
    error_type = "permission_error"


class NotFound(ProxyError):
    """No such route or object."""

    status = 404
    error_type = "not_found_error"


class ModelNotFound(NotFound):
    """No backend serves the requested model (OpenAI's own 404 shape)."""

    error_type = "invalid_request_error"


class MethodNotAllowed(ProxyError):
    """A method OpenAI-compatible APIs do not use (TRACE, CONNECT, PUT, …)."""

    status = 405
    error_type = "invalid_request_error"


class PayloadTooLarge(ProxyError):
    """The request body is larger than ``max_body_bytes``."""

    status = 413
    error_type = "invalid_request_error"


class BudgetExceeded(ProxyError):
    """The user has spent their energy or carbon budget for the period."""

    status = 429
    error_type = "energy_budget_exceeded"


class RateLimited(ProxyError):
    """Too many requests from one client address (the console's public playground)."""

    status = 429
    error_type = "rate_limit_exceeded"


class InternalError(ProxyError):
    """joulegate itself failed (a stage raised): never blamed on the backend."""

    status = 500
    error_type = "server_error"


class BackendUnreachable(ProxyError):
    """The model server refused or dropped the connection."""

    status = 502
    error_type = "backend_unreachable"


class QueueFull(ProxyError):
    """More than ``max_queue`` requests are already waiting."""

    status = 503
    error_type = "queue_full"


class LedgerUnavailable(ProxyError):
    """The ledger cannot keep a row (or look up a key): the request is refused unserved."""

    status = 503
    error_type = "server_error"

    def __init__(self, message: str, *, retry_after_s: float = 2.0) -> None:
        retry = str(max(1, round(retry_after_s)))
        super().__init__(message, code="ledger_unavailable", headers={"retry-after": retry})


class BackendTimeout(ProxyError):
    """The model server did not connect or answer within its timeout."""

    status = 504
    error_type = "backend_timeout"
