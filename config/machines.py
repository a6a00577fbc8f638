"""A measurement machine (a ``[[machines]]`` table): its model servers, meters and gate.

joulegate meters the power of the machine a request runs on. With ``[[machines]]``
one joulegate fronts several of them, each with its own queue (``max_concurrency``,
``max_queue``), its own meters (today's ``[meters]`` keys, under
``[machines.meters]``) and its own cool-down. Without it, the top-level
``[[backends]]``, ``[meters]``, ``max_concurrency`` and ``max_queue`` describe one
local machine named ``local`` (:data:`LOCAL_MACHINE`), as they always did.

A machine that is not ``local`` is another host: only meters that can be read over
the network make sense there (:data:`REMOTE_KINDS`); the local kinds would measure
the gateway instead.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from config.sections import BackendSettings, MeterSettings, require

LOCAL_MACHINE = "local"
"""The name of the one machine a configuration without ``[[machines]]`` describes."""
MACHINE_NAME_PATTERN = r"[A-Za-z0-9_.-]{1,64}"
"""What a machine's name may be (it is a metric label and a header value)."""
REMOTE_KINDS = frozenset({"prometheus", "ipmi", "shelly", "tasmota"})
"""Meter kinds read from another host; ``nvml``, ``rapl`` and ``estimate`` read the
host joulegate runs on, so only a ``local`` machine may use them."""


@dataclass(frozen=True)
class MachineSettings:
    """One measurement machine (a ``[[machines]]`` table)."""

    name: str = ""
    """The machine's name: in the ``energy`` object, ``x-joulegate-machine``, the
    ledger's ``machine`` column, spans and metric labels."""
    local: bool = False
    """The machine joulegate itself runs on: it may use the local meter kinds
    (``nvml``, ``rapl``, ``estimate``) and the CPU thermometer."""
    backends: tuple[BackendSettings, ...] = ()
    """Its model servers (``[[machines.backends]]``, the shape of ``[[backends]]``)."""
    meters: MeterSettings = field(default_factory=MeterSettings)
    """Its meters (``[machines.meters]``, the keys of ``[meters]``); on a machine that
    is not ``local``, ``auto`` means the remote meters configured here."""
    max_concurrency: int = 1
    """Requests this machine serves at once (1 = serialised, exact attribution)."""
    max_queue: int = 256
    """Requests allowed to wait for this machine."""
    cooldown_s: float = 0.0
    """A pause, in seconds, once every ``cooldown_every`` requests have finished
    (0 = none): the machine admits nothing meanwhile."""
    cooldown_every: int = 0
    """How many requests between two cool-downs (0 = never)."""
    cooldown_on_model_change: bool = False
    """Also pause ``cooldown_s`` before a request for another model than the one the
    machine served last (a study moving to its next model), so that the next model's
    first requests do not pay for the heat the last one left."""

    def __post_init__(self) -> None:
        require(
            re.fullmatch(MACHINE_NAME_PATTERN, self.name) is not None,
            "machines.name",
            "1 to 64 of A-Z, a-z, 0-9, '_', '.' and '-'",
        )
        require(bool(self.backends), "machines.backends", f"at least one for {self.name!r}")
        if not self.local:
            local_kinds = set(self.meters.kinds) - REMOTE_KINDS - {"auto"}
            require(
                not local_kinds,
                "machines.meters.kinds",
                f"remote kinds ({', '.join(sorted(REMOTE_KINDS))}) on machine {self.name!r}, "
                f"which is not local = true (not {', '.join(sorted(local_kinds))})",
            )
            require(
                "ipmi" not in self.remote_kinds or bool(self.meters.ipmi_host),
                "machines.meters.ipmi_host",
                f"the BMC's address for ipmi on machine {self.name!r}, which is not local",
            )
        require(1 <= self.max_concurrency <= 1024, "machines.max_concurrency", "between 1 and 1024")
        require(0 <= self.max_queue <= 100_000, "machines.max_queue", "between 0 and 100000")
        require(self.cooldown_s >= 0, "machines.cooldown_s", ">= 0")
        require(self.cooldown_every >= 0, "machines.cooldown_every", ">= 0")

    @property
    def remote_kinds(self) -> tuple[str, ...]:
        """The meter kinds to try on a machine that is not local: the listed ones, or
        with ``auto`` those whose URL (or ``ipmi``) is configured."""
        m = self.meters
        if m.kinds != ("auto",):
            return m.kinds
        kinds = ["prometheus"] if m.prometheus_url else []
        kinds += ["ipmi"] if m.ipmi else []
        kinds += [m.plug_kind] if m.plug_url else []
        return tuple(kinds)
