"""``request_day_sums``: per user, UTC day, model, task and kind (measured or
estimated), the sums the console's Compare and Usage read, kept by the database
itself; and ``request_day_sums_all``, the same per day for everyone (what an
admin's pages read: its size does not grow with the number of users).

A row (a *cell*) holds :data:`SUMS`: over its completed requests (no ``failure``,
``energy_j`` known: Compare's filter) the request count and the count, sum and sum
of squares of energy, SCI, CO2e and energy per output token; over all its requests
the sums of ``joulegate report`` (requests, failed, tokens, duration, energy,
dynamic energy, CO2e, the forecasts' error). Triggers on ``requests`` keep them: an
insert adds its row, a delete subtracts it, an update subtracts the old row and adds
the new one. So every way a row gets in (the record stage, a fallback file
replayed, a repair, another gateway on a shared PostgreSQL) keeps them right, with
no Python on the proxy's path, and a month reads a few hundred summary rows instead
of a million requests.

The model is ``COALESCE(model_served, model_requested, '(none)')``, the task
``COALESCE(task, '(none)')`` and the day ``substr(ts, 1, 10)``: ``ts`` is the
same fixed-width UTC text (``YYYY-MM-DDTHH:MM:SS.ffffffZ``) in both databases.

Each float sum is kept with a compensation term (Neumaier's summation: ``x`` plus
``x_c`` is the sum), so a cell that many rows were added to and removed from does
not drift: its figures stay those of a fresh sum over its rows, to the last bits
that any two orders of adding differ in. In SQLite a cell whose rows are all gone is
deleted; in PostgreSQL it is left, and readers skip it.

The migrations that build the tables fill them from the rows already there; they are
imported by :mod:`accounting.ledger.rows` (SQLite) and
:mod:`accounting.ledger.postgres` (PostgreSQL, where each connection adds to its
own ``slot`` of a cell, so that concurrent commits of one busy cell do not queue
on one row's lock).
"""

from __future__ import annotations

# Every statement here is built from the fixed names below, never from input.
# ruff: noqa: S105, S608

_MODEL = "COALESCE({r}.model_served, {r}.model_requested, '(none)')"
_KEYS = {
    # table: its key columns and what a requests row ``{r}`` puts in them
    "request_day_sums": (
        ("user", "{r}.user"),
        ("day", "substr({r}.ts, 1, 10)"),
        ("model", _MODEL),
        ("task", "COALESCE({r}.task, '(none)')"),
        ("estimated", "{r}.energy_estimated"),
    ),
    "request_day_sums_all": (
        ("day", "substr({r}.ts, 1, 10)"),
        ("model", _MODEL),
        ("task", "COALESCE({r}.task, '(none)')"),
        ("estimated", "{r}.energy_estimated"),
    ),
}
_PER_TOKEN = "CASE WHEN {r}.completion_tokens > 0 THEN {r}.energy_j / {r}.completion_tokens END"
_FORECASTED = "{r}.forecast_energy_j IS NOT NULL AND {r}.energy_j > 0 AND {r}.failure IS NULL"
_FORECAST_APE = (
    "CASE WHEN "
    + _FORECASTED
    + " THEN ABS({r}.forecast_energy_j - {r}.energy_j) / {r}.energy_j END"
)


def _done(value: str) -> str:
    """``value`` for a completed row (no failure, energy known), else NULL."""
    return f"CASE WHEN {{r}}.failure IS NULL AND {{r}}.energy_j IS NOT NULL THEN {value} END"


SUMS: tuple[tuple[str, str, str], ...] = (
    # column, how it adds up (count: rows where the value is not NULL; int, float: the
    # values, NULL adding nothing), the value of a requests row ``{r}``.
    # Compare's figures, over completed rows:
    ("n", "count", _done("1")),
    ("sci_n", "count", _done("{r}.sci_g")),
    ("co2e_n", "count", _done("{r}.co2e_g")),
    ("token_n", "count", _done(_PER_TOKEN)),
    ("energy_j", "float", _done("{r}.energy_j")),
    ("energy_j_sq", "float", _done("{r}.energy_j * {r}.energy_j")),
    ("sci_g", "float", _done("{r}.sci_g")),
    ("sci_g_sq", "float", _done("{r}.sci_g * {r}.sci_g")),
    ("co2e_g", "float", _done("{r}.co2e_g")),
    ("co2e_g_sq", "float", _done("{r}.co2e_g * {r}.co2e_g")),
    ("j_per_token", "float", _done(_PER_TOKEN)),
    ("j_per_token_sq", "float", _done(f"({_PER_TOKEN}) * ({_PER_TOKEN})")),
    # The report's (Usage), over every row:
    ("requests", "count", "1"),
    ("failed", "count", "{r}.failure"),
    ("prompt_tokens", "int", "{r}.prompt_tokens"),
    ("completion_tokens", "int", "{r}.completion_tokens"),
    ("duration_s", "float", "{r}.duration_s"),
    ("all_energy_j", "float", "{r}.energy_j"),
    ("energy_dynamic_j", "float", "{r}.energy_dynamic_j"),
    ("all_co2e_g", "float", "{r}.co2e_g"),
    ("forecast_ape", "float", _FORECAST_APE),
    ("forecast_rows", "count", "CASE WHEN " + _FORECASTED + " THEN 1 END"),
)
"""What a cell adds up; each ``float`` has a compensation column ``NAME_c``."""
_WATCHED = (
    "ts, user, model_served, model_requested, task, energy_estimated, failure, energy_j,"
    " sci_g, co2e_g, prompt_tokens, completion_tokens, duration_s, energy_dynamic_j,"
    " forecast_energy_j"
)
"""The columns an update must change to move a row between cells or change its sums."""
_VALUES = [c for name, how, _ in SUMS for c in ((name, f"{name}_c") if how == "float" else (name,))]


def _total(name: str) -> str:
    """A sum over cells of column ``name`` (with its compensation)."""
    how = next(h for n, h, _ in SUMS if n == name)
    return f"TOTAL({name}) + TOTAL({name}_c)" if how == "float" else f"SUM({name})"


def _read(table: str, group: str, figures: tuple[str, ...], having: str) -> str:
    return (
        f"SELECT {group}, {', '.join(_total(f) for f in figures)} FROM {table}"
        f" WHERE {{where}} GROUP BY {group} HAVING SUM({having}) > 0 ORDER BY {group}"
    )


_COMPARE = ("n", "energy_j", "energy_j_sq", "sci_n", "sci_g", "sci_g_sq", "co2e_n", "co2e_g",
            "co2e_g_sq", "token_n", "j_per_token", "j_per_token_sq")  # fmt: skip
_REPORT = ("requests", "failed", "prompt_tokens", "completion_tokens", "duration_s",
           "all_energy_j", "energy_dynamic_j", "all_co2e_g", "forecast_ape",
           "forecast_rows")  # fmt: skip
READ_USER_SUMS = _read("request_day_sums", "model, task, estimated", _COMPARE, "n")
"""Per (model, task, estimated), in Compare's order (n, sum, sum of squares per figure:
requests and energy, SCI, CO2e, energy per output token). ``{where}`` filters ``user``
and ``day``."""
READ_ALL_SUMS = _read("request_day_sums_all", "model, task, estimated", _COMPARE, "n")
"""The same for everyone; ``{where}`` filters ``day``."""
READ_USER_DAYS = _read("request_day_sums", "day", _REPORT, "requests")
"""Per day, in the order of ``joulegate report``'s columns (requests, failed, prompt and
completion tokens, duration, energy, dynamic energy, CO2e, the forecasts' summed
absolute percentage error and its rows). ``{where}`` filters ``user`` and ``day``."""
READ_ALL_DAYS = _read("request_day_sums_all", "day", _REPORT, "requests")
"""The same for everyone; ``{where}`` filters ``day``."""


def _key(table: str, r: str, *, pg: bool) -> tuple[list[str], list[str]]:
    """The key columns of ``table`` (with PostgreSQL's ``slot``) and row ``r``'s values."""
    names = [f'"{k}"' if pg and k == "user" else k for k, _ in _KEYS[table]]
    values = [v.format(r=r) for _, v in _KEYS[table]]
    if pg:
        values = [f'{r}."user"' if v == f"{r}.user" else v for v in values]
        names.append("slot")
        values.append("pg_backend_pid() % 16")
    return names, values


def _neumaier(col: str, s: str) -> str:
    """``col = col + excluded.col`` and its compensation ``col_c``, from old values."""
    x, t = f"excluded.{col}", f"({s}{col} + excluded.{col})"
    return (
        f"{col} = {s}{col} + {x}, {col}_c = {s}{col}_c + CASE WHEN abs({s}{col}) >= abs({x})"
        f" THEN ({s}{col} - {t}) + {x} ELSE ({x} - {t}) + {s}{col} END"
    )


def _row_values(r: str, sign: str) -> list[str]:
    """What one row ``r`` (NEW or OLD) adds to each of :data:`_VALUES`, times ``sign``."""
    out = []
    for _, how, value in SUMS:
        v = value.format(r=r)
        if how == "count":
            out.append(f"{sign} * (CASE WHEN {v} IS NOT NULL THEN 1 ELSE 0 END)")
        else:
            out.append(f"{sign} * COALESCE({v}, {'0' if how == 'int' else '0.0'})")
            if how == "float":
                out.append("0.0")
    return out


def _grouped_values(r: str, sign: str, total: str) -> list[str]:
    """What the rows ``r`` of a group add to each of :data:`_VALUES`, times ``sign``;
    ``total`` is the database's never-NULL float sum of ``{}``."""
    out = []
    for _, how, value in SUMS:
        v = value.format(r=r)
        if how == "count":
            out.append(f"{sign} * COUNT({v})")
        elif how == "int":
            out.append(f"{sign} * COALESCE(SUM({v}), 0)")
        else:
            out += [f"{sign} * {total.format(v)}", "0.0"]
    return out


def _adding(s: str) -> str:
    """The ``SET`` of an upsert: each column plus ``excluded``'s (``s``: the alias)."""
    return ", ".join(
        _neumaier(name, s) if how == "float" else f"{name} = {s}{name} + excluded.{name}"
        for name, how, _ in SUMS
    )


def _upsert(table: str, r: str, sign: str) -> str:
    """SQLite: add row ``r`` (times ``sign``) to its cell of ``table``, making the cell
    if new."""
    names, key = _key(table, r, pg=False)
    return (
        f"INSERT INTO {table} ({', '.join([*names, *_VALUES])})"
        f" SELECT {', '.join([*key, *_row_values(r, sign)])} WHERE 1"
        f" ON CONFLICT ({', '.join(names)}) DO UPDATE SET {_adding('')}"
    )


def _drop_empty(table: str, r: str) -> str:
    """SQLite: delete row ``r``'s cell once no row is left in it (in PostgreSQL a cell
    is spread over slots, and an empty one is left for the reader to skip)."""
    names, key = _key(table, r, pg=False)
    match = " AND ".join(f"{k} = {v}" for k, v in zip(names, key, strict=True))
    return f"DELETE FROM {table} WHERE {match} AND requests = 0"


def _create(table: str, *, pg: bool) -> str:
    names, _ = _key(table, "r", pg=pg)
    real = "DOUBLE PRECISION" if pg else "REAL"
    ints = {name for name, how, _ in SUMS if how != "float"}
    columns = [
        *(f"{k} {'INTEGER' if k in ('estimated', 'slot') else 'TEXT'} NOT NULL" for k in names),
        *(f"{c} {'BIGINT' if c in ints else real} NOT NULL" for c in _VALUES),
    ]
    tail = "" if pg else " WITHOUT ROWID"
    return f"CREATE TABLE {table} ({', '.join(columns)}, PRIMARY KEY ({', '.join(names)})){tail}"


def _backfill(table: str) -> str:
    """SQLite: sum the rows already in ``requests`` into ``table`` (compensations 0)."""
    names, key = _key(table, "requests", pg=False)
    grouped = ", ".join(str(i) for i in range(1, len(_KEYS[table]) + 1))
    return (
        f"INSERT INTO {table} ({', '.join([*names, *_VALUES])})"
        f" SELECT {', '.join([*key, *_grouped_values('requests', '1', 'TOTAL({})')])}"
        f" FROM requests GROUP BY {grouped}"
    )


def _pg_add(table: str, rows: str, sign: str, slot: str = "pg_backend_pid() % 16") -> str:
    """PostgreSQL: add ``rows`` (a statement's transition table, or ``requests``
    itself), grouped per cell, times ``sign``, to ``table``."""
    names, key = _key(table, "r", pg=True)
    key[-1] = slot
    values = _grouped_values("r", sign, "COALESCE(SUM({}), 0.0)")
    grouped = ", ".join(str(i) for i in range(1, len(_KEYS[table]) + 1))
    return (
        f"INSERT INTO {table} AS s ({', '.join([*names, *_VALUES])})"
        f" SELECT {', '.join([*key, *values])} FROM {rows} AS r GROUP BY {grouped}"
        f" ON CONFLICT ({', '.join(names)}) DO UPDATE SET {_adding('s.')}"
    )


def _sqlite_trigger(event: str, steps: list[str]) -> str:
    body = " ".join(f"{step};" for step in steps)
    name = f"request_day_sums_{event.split()[0].lower()}"
    return f"CREATE TRIGGER {name} AFTER {event} ON requests BEGIN {body} END"


def _sqlite_steps(*parts: str) -> list[str]:
    out = []
    for part in parts:
        for table in _KEYS:
            if part == "minus":
                out += [_upsert(table, "OLD", "-1"), _drop_empty(table, "OLD")]
            else:
                out.append(_upsert(table, "NEW", "1"))
    return out


SQLITE_MIGRATION: tuple[str, ...] = (
    *(_create(t, pg=False) for t in _KEYS),
    *(_backfill(t) for t in _KEYS),
    _sqlite_trigger("INSERT", _sqlite_steps("plus")),
    _sqlite_trigger("DELETE", _sqlite_steps("minus")),
    _sqlite_trigger(f"UPDATE OF {_WATCHED}", _sqlite_steps("minus", "plus")),
)
"""SQLite's migration 12: the tables, filled from the rows there, and their triggers."""

_PG_FUNCTION = """CREATE FUNCTION {name}() RETURNS trigger
LANGUAGE plpgsql AS $$ BEGIN {body}; RETURN NULL; END $$"""
_PG_TRIGGER = """CREATE TRIGGER {name} AFTER {event} ON requests
REFERENCING {tables} FOR EACH STATEMENT EXECUTE FUNCTION {name}()"""


def _pg_trigger(event: str, *steps: tuple[str, str]) -> tuple[str, str]:
    """A statement trigger on ``event``: each (transition table, sign) of ``steps``
    added to both tables, grouped, once per statement."""
    name = f"request_day_sums_{event.lower()}"
    body = "; ".join(_pg_add(t, rows, sign) for rows, sign in steps for t in _KEYS)
    tables = " ".join(f"{rows.split('_')[0].upper()} TABLE AS {rows}" for rows, _ in steps)
    return (
        _PG_FUNCTION.format(name=name, body=body),
        _PG_TRIGGER.format(name=name, event=event, tables=tables),
    )


PG_MIGRATION: tuple[str, ...] = (
    # Inserts wait until the migration commits, so none is missed between the backfill
    # and the triggers (another gateway's rows wait in its spill meanwhile).
    "LOCK TABLE requests IN SHARE ROW EXCLUSIVE MODE",
    *(_create(t, pg=True) for t in _KEYS),
    *(_pg_add(t, "requests", "1", slot="0") for t in _KEYS),
    # Statement triggers, not row triggers: a statement's rows (a COPY, a repair that
    # deletes a day) are added up once per cell. A row trigger updated one cell's row
    # once per row, and PostgreSQL keeps every version of a row updated within one
    # transaction: 20,000 rows in one transaction went in at ~1,000 rows/s.
    *_pg_trigger("INSERT", ("new_rows", "1")),
    *_pg_trigger("DELETE", ("old_rows", "-1")),
    *_pg_trigger("UPDATE", ("old_rows", "-1"), ("new_rows", "1")),
    """CREATE FUNCTION request_day_sums_truncate() RETURNS trigger LANGUAGE plpgsql AS
        $$ BEGIN DELETE FROM request_day_sums; DELETE FROM request_day_sums_all;
        RETURN NULL; END $$""",
    """CREATE TRIGGER request_day_sums_truncate AFTER TRUNCATE ON requests
        FOR EACH STATEMENT EXECUTE FUNCTION request_day_sums_truncate()""",
)
"""PostgreSQL's migration 8: the same tables (plus ``slot``), filled, and the triggers."""
