"""A study's dataset: one row per request, as JSON lines and CSV, appended and flushed
row by row so that an interrupted study keeps every finished request.

``dataset.jsonl`` is the record ``--resume`` reads (a line torn by a crash is
skipped); ``dataset.csv`` is rewritten from it when a study resumes, so the two
always hold the same rows. Each row's ``request_id`` is joulegate's
``x-request-id``, the ledger's ``request_id``.
"""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path
from typing import IO, Any

import msgspec

log = logging.getLogger("joulegate.bench")

COMPONENTS = ("gpu", "cpu", "dram", "psys", "machine")
"""The meters' components; each has an ``energy_<component>_j`` column in the CSV."""


class StudyRow(msgspec.Struct, kw_only=True):
    """One measured request of a study: what was asked, answered and measured."""

    model: str
    task: str
    prompt_id: str
    repeat: int
    """1 to ``--repeats``."""
    prompt: str
    response: str
    prompt_tokens: int | None
    completion_tokens: int | None
    duration_s: float | None
    """joulegate's metered window (admission to the backend's last byte)."""
    client_s: float
    """The round trip as the harness saw it (request sent to response parsed)."""
    energy_j: float | None
    energy_dynamic_j: float | None
    energy_components_j: dict[str, float | None] = msgspec.field(default_factory=dict)
    power_w: float | None = None
    idle_power_w: float | None = None
    meter: str | None = None
    estimated: bool = False
    carbon_intensity_g_per_kwh: float | None = None
    carbon_source: str | None = None
    co2e_g: float | None = None
    sci_g: float | None = None
    sci_operational_g: float | None = None
    sci_embodied_g: float | None = None
    sci_g_per_token: float | None = None
    energy_low_j: float | None = None
    """An estimate's energy at its lowest plausible coefficients (None when measured)."""
    energy_high_j: float | None = None
    """An estimate's energy at its highest plausible coefficients (None when measured)."""
    estimate_model: str | None = None
    """The estimate's model and coefficients (None when measured)."""
    embodied_model: str | None = None
    """How the hardware's embodied emissions behind ``sci_embodied_g`` were chosen."""
    max_tokens: int | None = None
    """The request's ``max_tokens``."""
    finish_reason: str | None = None
    """``stop``, or ``length`` when the answer hit ``max_tokens``."""
    request_id: str
    ts: str
    """When the harness sent it, UTC ISO 8601."""

    @property
    def key(self) -> tuple[str, str, str, int]:
        """What identifies the request in the study's plan."""
        return (self.model, self.task, self.prompt_id, self.repeat)


_FIELDS = [f for f in StudyRow.__struct_fields__ if f != "energy_components_j"]
CSV_COLUMNS: tuple[str, ...] = (
    *_FIELDS[: _FIELDS.index("energy_dynamic_j") + 1],
    *(f"energy_{c}_j" for c in COMPONENTS),
    *_FIELDS[_FIELDS.index("energy_dynamic_j") + 1 :],
)


def csv_cells(row: StudyRow) -> list[Any]:
    """A row's CSV cells in :data:`CSV_COLUMNS` order (empty for unknown figures)."""
    values: dict[str, Any] = {f: getattr(row, f) for f in _FIELDS}
    for c in COMPONENTS:
        values[f"energy_{c}_j"] = row.energy_components_j.get(c)
    return ["" if values[c] is None else values[c] for c in CSV_COLUMNS]


def read_rows(path: Path) -> list[StudyRow]:
    """The rows of a ``dataset.jsonl`` (none when it does not exist)."""
    if not path.exists():
        return []
    rows: list[StudyRow] = []
    for number, line in enumerate(path.read_bytes().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(msgspec.json.decode(line, type=StudyRow))
        except msgspec.DecodeError:  # a line torn by a crash mid-write: redo that request
            log.warning("%s line %d is not a whole row; its request is sent again", path, number)
    return rows


class Dataset:
    """The two dataset files of a study folder, open for appending."""

    def __init__(self, folder: Path) -> None:
        self.jsonl_path = folder / "dataset.jsonl"
        self.csv_path = folder / "dataset.csv"
        self.rows: list[StudyRow] = read_rows(self.jsonl_path)
        self._jsonl: IO[bytes] | None = None
        self._csv: IO[str] | None = None

    def open(self) -> None:
        """Open both files; the JSON lines keep only whole rows, the CSV is rebuilt."""
        self.jsonl_path.write_bytes(b"".join(msgspec.json.encode(r) + b"\n" for r in self.rows))
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        writer.writerows(csv_cells(r) for r in self.rows)
        self.csv_path.write_text(out.getvalue(), encoding="utf-8")
        self._jsonl = self.jsonl_path.open("ab")
        self._csv = self.csv_path.open("a", encoding="utf-8", newline="")

    def append(self, row: StudyRow) -> None:
        """Write one row to both files and flush them (a few hundred bytes: the
        harness sends nothing meanwhile, so this costs no measured time)."""
        if self._jsonl is None or self._csv is None:
            raise RuntimeError("the dataset is not open")
        self._jsonl.write(msgspec.json.encode(row) + b"\n")
        self._jsonl.flush()
        csv.writer(self._csv, lineterminator="\n").writerow(csv_cells(row))
        self._csv.flush()
        self.rows.append(row)

    def close(self) -> None:
        """Close both files."""
        for f in (self._jsonl, self._csv):
            if f is not None:
                f.close()
        self._jsonl = self._csv = None
