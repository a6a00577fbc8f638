"""Whole-machine power from the BMC: ``ipmitool dcmi power reading``.

The BMC reports the power at the server's PSUs, the figure closest to the
wall. ``ipmitool`` is run as a subprocess on the meter's own polling thread
(never on the event loop); the runner is passed in so tests need no BMC.
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
from collections.abc import Callable, Mapping, Sequence

from config.errors import MeterError, MeterUnavailable
from meters.base import Meter, Reading

Runner = Callable[[Sequence[str]], str]
"""Runs a command and returns its standard output; raises MeterError on failure."""

COMMAND = ("dcmi", "power", "reading")
_READING = re.compile(r"Instantaneous power reading:\s*([0-9.]+)\s*Watts", re.IGNORECASE)
_STATE = re.compile(r"Power reading state is:\s*(\w+)", re.IGNORECASE)


def run_command(
    argv: Sequence[str], timeout_s: float = 5.0, env: Mapping[str, str] | None = None
) -> str:
    """Run ``argv`` and return its output; failures become MeterError."""
    try:
        done = subprocess.run(  # noqa: S603 - fixed argv, ipmitool resolved with which()
            list(argv), capture_output=True, text=True, timeout=timeout_s, check=False,
            env=None if env is None else dict(env),
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise MeterError(f"{argv[0]}: {exc}") from exc
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip().splitlines()
        raise MeterError(
            f"{' '.join(argv)} exited {done.returncode}: {detail[-1] if detail else ''}"
        )
    return done.stdout


def parse_power_w(output: str) -> float:
    """The instantaneous reading in W from ``ipmitool dcmi power reading`` output."""
    state = _STATE.search(output)
    if state and state.group(1).lower() != "activated":
        raise MeterError(f"the BMC's DCMI power reading is {state.group(1)}")
    match = _READING.search(output)
    if not match:
        raise MeterError("no 'Instantaneous power reading' in ipmitool's output")
    return float(match.group(1))


class IpmiMeter(Meter):
    """The BMC's power reading as the ``machine`` component."""

    name = "ipmi"
    remote = True

    def __init__(
        self,
        runner: Runner | None = None,
        ipmitool: str | None = None,
        *,
        host: str = "",
        user: str = "",
        password: str = "",
    ) -> None:
        # Another host's BMC over the network (IPMI v2 lanplus); the password goes in
        # the environment (-E), never on a command line other users can read.
        self._host = host
        lan = ("-I", "lanplus", "-H", host, "-U", user, "-E") if host else ()
        if runner is None:
            path = ipmitool or shutil.which("ipmitool")
            if path is None:
                raise MeterUnavailable("ipmitool is not installed (apt-get install ipmitool)")
            self._argv: tuple[str, ...] = (path, *lan, *COMMAND)
            env = {"IPMI_PASSWORD": password, "PATH": "/usr/bin:/bin"} if host else None
            self._run: Runner = functools.partial(run_command, env=env)
        else:
            self._argv = (ipmitool or "ipmitool", *lan, *COMMAND)
            self._run = runner
        self._probe()

    @property
    def components(self) -> tuple[str, ...]:
        """Only ``machine``."""
        return ("machine",)

    def read(self) -> dict[str, Reading]:
        """The BMC's instantaneous power."""
        return {"machine": Reading(power_w=parse_power_w(self._run(self._argv)))}

    def describe(self) -> str:
        """``ipmi: machine from `ipmitool dcmi power reading``` (and the BMC's host)."""
        where = f" at {self._host}" if self._host else ""
        return f"ipmi: machine from `ipmitool dcmi power reading`{where}"
