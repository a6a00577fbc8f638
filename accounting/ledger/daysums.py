"""``request_day_sums``: per UTC day, user, model, task and kind (measured or
estimated), the sums Compare needs, kept by the database itself.

One row holds, over that cell's completed requests (no ``failure``, ``energy_j``
known, the same filter as Compare's grouped query), the request count and the
count, sum and sum of squares of energy per request, SCI per request, CO2e per
request and energy per output token. Triggers on ``requests`` keep it: an insert
adds its row, a delete subtracts it, an update subtracts the old row and adds the
new one. So every way a row gets in (the record stage, a fallback file replayed,
a repair, another gateway on a shared PostgreSQL) keeps it right, with no Python
on the proxy's path, and a period's Compare reads a few hundred summary rows
instead of a million requests.

The model is ``COALESCE(model_served, model_requested, '(none)')``, the task
``COALESCE(task, '(none)')`` and the day ``substr(ts, 1, 10)``: ``ts`` is the
same fixed-width UTC text (``YYYY-MM-DDTHH:MM:SS.ffffffZ``) in both databases.

Each float sum is kept with a compensation term (Neumaier's summation: ``x`` plus
``x_c`` is the sum), so a cell that many rows were added to and removed from does
not drift: its figures stay those of a fresh sum over its rows, to the last bits
that any two orders of adding differ in. A cell whose rows are all gone is deleted.

The migrations that build the table fill it from the rows already there; they are
imported by :mod:`accounting.ledger.rows` (SQLite) and
:mod:`accounting.ledger.postgres` (PostgreSQL, where each connection adds to its
own ``slot`` of a cell, so that concurrent commits of one busy cell do not queue
on one row's lock).
"""

from __future__ import annotations

# Every statement here is built from the fixed names below, never from input.
# ruff: noqa: S105, S608

KEY = ("day", "user", "model", "task", "estimated")
COUNTS = ("n", "sci_n", "co2e_n", "token_n")
"""Integer columns: requests, and those with SCI, with CO2e, with output tokens."""
_PER_TOKEN = "CASE WHEN {r}.completion_tokens > 0 THEN {r}.energy_j / {r}.completion_tokens END"
FLOATS: tuple[tuple[str, str], ...] = (
    # column, the value a requests row ``{r}`` adds (NULL adds nothing)
    ("energy_j", "{r}.energy_j"),
    ("energy_j_sq", "{r}.energy_j * {r}.energy_j"),
    ("sci_g", "{r}.sci_g"),
    ("sci_g_sq", "{r}.sci_g * {r}.sci_g"),
    ("co2e_g", "{r}.co2e_g"),
    ("co2e_g_sq", "{r}.co2e_g * {r}.co2e_g"),
    ("j_per_token", _PER_TOKEN),
    ("j_per_token_sq", f"({_PER_TOKEN}) * ({_PER_TOKEN})"),
)
_COUNTED = ("{r}.sci_g", "{r}.co2e_g", _PER_TOKEN)
"""What each of :data:`COUNTS` after ``n`` counts when it is not NULL."""
_KEYED = (
    "substr({r}.ts, 1, 10)",
    "{r}.user",
    "COALESCE({r}.model_served, {r}.model_requested, '(none)')",
    "COALESCE({r}.task, '(none)')",
    "{r}.energy_estimated",
)
_COMPLETED = "{r}.failure IS NULL AND {r}.energy_j IS NOT NULL"
_WATCHED = (
    "ts, user, model_served, model_requested, task, energy_estimated, failure, energy_j,"
    " sci_g, co2e_g, completion_tokens"
)
"""The columns an update must change to move a row between cells or change its sums."""

READ_SUMS = (
    "SELECT model, task, estimated, "
    + ", ".join(
        part
        for count, (total, _), (squares, _) in zip(COUNTS, FLOATS[0::2], FLOATS[1::2], strict=True)
        for part in (
            f"SUM({count})",
            f"TOTAL({total}) + TOTAL({total}_c)",
            f"TOTAL({squares}) + TOTAL({squares}_c)",
        )
    )
    + " FROM request_day_sums WHERE {where} GROUP BY model, task, estimated HAVING SUM(n) > 0"
)
"""Per (model, task, estimated), in Compare's order (n, sum, sum of squares per figure):
requests; energy; SCI; CO2e; energy per output token. ``{where}`` filters ``day`` and
``user``."""


def _names(quote_user: bool, slot: bool) -> list[str]:
    key = ['"user"' if k == "user" and quote_user else k for k in KEY]
    floats = [c for name, _ in FLOATS for c in (name, f"{name}_c")]
    return [*key, *(["slot"] if slot else []), *COUNTS, *floats]


def _added(r: str, sign: str, *, quote_user: bool, slot: bool) -> list[str]:
    """The values one row ``r`` (NEW or OLD) adds, times ``sign``."""
    key = [k.format(r=r) for k in _KEYED]
    if quote_user:
        key[1] = f'{r}."user"'
    counts = [sign] + [
        f"{sign} * (CASE WHEN {c.format(r=r)} IS NOT NULL THEN 1 ELSE 0 END)" for c in _COUNTED
    ]
    floats = [v for _, e in FLOATS for v in (f"{sign} * COALESCE({e.format(r=r)}, 0.0)", "0.0")]
    return [*key, *(["pg_backend_pid() % 16"] if slot else []), *counts, *floats]


def _neumaier(col: str, s: str) -> str:
    """``col = col + excluded.col`` and its compensation ``col_c``, from old values."""
    x, t = f"excluded.{col}", f"({s}{col} + excluded.{col})"
    return (
        f"{col} = {s}{col} + {x}, {col}_c = {s}{col}_c + CASE WHEN abs({s}{col}) >= abs({x})"
        f" THEN ({s}{col} - {t}) + {x} ELSE ({x} - {t}) + {s}{col} END"
    )


def _upsert(r: str, sign: str, *, pg: bool) -> str:
    """Add row ``r`` (times ``sign``) to its cell, creating the cell if new."""
    s = "s." if pg else ""
    table = "request_day_sums AS s" if pg else "request_day_sums"
    sets = [f"{c} = {s}{c} + excluded.{c}" for c in COUNTS] + [_neumaier(c, s) for c, _ in FLOATS]
    conflict = ", ".join(_names(pg, pg)[: len(KEY) + (1 if pg else 0)])
    return (
        f"INSERT INTO {table} ({', '.join(_names(pg, pg))})"
        f" SELECT {', '.join(_added(r, sign, quote_user=pg, slot=pg))}"
        f" WHERE {_COMPLETED.format(r=r)}"
        f" ON CONFLICT ({conflict}) DO UPDATE SET {', '.join(sets)}"
    )


def _drop_empty(r: str) -> str:
    """Delete row ``r``'s cell once nothing is left in it (SQLite only: in PostgreSQL
    a cell is spread over slots, and an empty one is left for the reader to skip)."""
    key = [k.format(r=r) for k in _KEYED]
    match = " AND ".join(f"{name} = {value}" for name, value in zip(KEY, key, strict=True))
    return f"DELETE FROM request_day_sums WHERE {match} AND n = 0"


def _columns_sql(user: str, real: str) -> str:
    return ", ".join(
        [
            "day TEXT NOT NULL",
            f"{user} TEXT NOT NULL",
            "model TEXT NOT NULL",
            "task TEXT NOT NULL",
            "estimated INTEGER NOT NULL",
            *(f"{c} BIGINT NOT NULL" for c in COUNTS),
            *(f"{c}{tail} {real} NOT NULL" for c, _ in FLOATS for tail in ("", "_c")),
        ]
    )


def _backfill(user: str, total: str, slot: bool) -> str:
    """Sum the rows already in ``requests`` into their cells (compensations 0);
    ``total`` is the database's never-NULL sum of ``{}``."""
    counts = ["COUNT(*)", *(f"COUNT({c.format(r='requests')})" for c in _COUNTED)]
    floats = [v for _, e in FLOATS for v in (total.format(e.format(r="requests")), "0.0")]
    key = [k.format(r="requests") for k in _KEYED]
    key[1] = f"requests.{user}"
    names = _names(user != "user", slot)
    return (
        f"INSERT INTO request_day_sums ({', '.join(names)})"
        f" SELECT {', '.join([*key, *(['0'] if slot else []), *counts, *floats])}"
        f" FROM requests WHERE {_COMPLETED.format(r='requests')}"
        f" GROUP BY {', '.join(str(i) for i in range(1, len(KEY) + 1))}"
    )


SQLITE_MIGRATION: tuple[str, ...] = (
    f"CREATE TABLE request_day_sums ({_columns_sql('user', 'REAL')},"
    f" PRIMARY KEY ({', '.join(KEY)})) WITHOUT ROWID",
    _backfill("user", "TOTAL({})", slot=False),
    f"CREATE TRIGGER request_day_sums_insert AFTER INSERT ON requests"
    f" BEGIN {_upsert('NEW', '1', pg=False)}; END",
    f"CREATE TRIGGER request_day_sums_delete AFTER DELETE ON requests"
    f" BEGIN {_upsert('OLD', '-1', pg=False)}; {_drop_empty('OLD')}; END",
    f"CREATE TRIGGER request_day_sums_update AFTER UPDATE OF {_WATCHED} ON requests"
    f" BEGIN {_upsert('OLD', '-1', pg=False)}; {_drop_empty('OLD')};"
    f" {_upsert('NEW', '1', pg=False)}; END",
)
"""SQLite's migration 12: the table, filled from the rows there, and its triggers."""

_PG_ROW = """CREATE FUNCTION request_day_sums_row() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP <> 'INSERT' THEN
        {minus};
    END IF;
    IF TG_OP <> 'DELETE' THEN
        {plus};
    END IF;
    RETURN NULL;
END $$"""

_QUOTED_USER = '"user"'
_PG_KEY = ", ".join([*_names(quote_user=True, slot=True)[: len(KEY) + 1]])
PG_MIGRATION: tuple[str, ...] = (
    # Inserts wait until the migration commits, so none is missed between the backfill
    # and the trigger (another gateway's row waits in its spill meanwhile).
    "LOCK TABLE requests IN SHARE ROW EXCLUSIVE MODE",
    f"CREATE TABLE request_day_sums ({_columns_sql(_QUOTED_USER, 'DOUBLE PRECISION')},"
    f" slot INTEGER NOT NULL DEFAULT 0, PRIMARY KEY ({_PG_KEY}))",
    _backfill(_QUOTED_USER, "COALESCE(SUM({}), 0.0)", slot=True),
    _PG_ROW.format(
        minus=_upsert("OLD", "-1", pg=True),
        plus=_upsert("NEW", "1", pg=True),
    ),
    f"CREATE TRIGGER request_day_sums_row AFTER INSERT OR DELETE OR UPDATE OF"
    f" {_WATCHED.replace('user', _QUOTED_USER)} ON requests"
    f" FOR EACH ROW EXECUTE FUNCTION request_day_sums_row()",
    """CREATE FUNCTION request_day_sums_clear() RETURNS trigger LANGUAGE plpgsql AS
        $$ BEGIN DELETE FROM request_day_sums; RETURN NULL; END $$""",
    """CREATE TRIGGER request_day_sums_truncate AFTER TRUNCATE ON requests
        FOR EACH STATEMENT EXECUTE FUNCTION request_day_sums_clear()""",
)
"""PostgreSQL's migration 8: the same table (plus ``slot``), filled, and its triggers."""
