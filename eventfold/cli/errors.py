"""One-line explanations of the failures a CLI user can fix: stores, broker, names.

Invariant: no password reaches the terminal. Database URLs are rendered with
the password hidden, and any `scheme://user:password@` left inside an error
message is masked before it is printed.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

# Raised by our own commands for a name or a state the user gave or can change
# (an unknown projection or id, a projection busy rebuilding): the message says it all.
USER_ERRORS: tuple[type[Exception], ...] = (ValueError, LookupError, RuntimeError)

_CREDENTIALS = re.compile(r"(\w[\w+.-]*://[^:/@\s]*):[^@\s]*@")
# asyncpg's refusals to connect, by name so that SQLite-only installs need no asyncpg.
_CONNECT_REFUSALS = {
    "CannotConnectNowError",
    "ConnectionDoesNotExistError",
    "InvalidCatalogNameError",
    "InvalidPasswordError",
    "InvalidAuthorizationSpecificationError",
    "TooManyConnectionsError",
}


def redact(url: str) -> str:
    """A database URL with its password hidden."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return mask(url)


def mask(text: str) -> str:
    return _CREDENTIALS.sub(r"\1:***@", text)


def one_line(exc: BaseException) -> str:
    """The first line of an exception's message (SQLAlchemy appends the SQL below it)."""
    lines = str(exc).strip().splitlines()
    return mask(lines[0] if lines else type(exc).__name__)[:300]


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _says(exc: BaseException, *needles: str) -> bool:
    text = str(exc).lower()
    return any(n in text for n in needles)


def explain_settings(exc: BaseException) -> str | None:
    """A bad `EVENTFOLD_*` variable, named as the user set it."""
    from pydantic import ValidationError

    if not isinstance(exc, ValidationError) or not exc.title.endswith("Settings"):
        return None
    first = exc.errors()[0]
    name = "EVENTFOLD_" + "_".join(str(p) for p in first["loc"]).upper()
    return f"invalid setting {name}: {mask(first['msg'])}"


def explain(exc: BaseException, *, store: str | None, db_url: str | None, bootstrap: str) -> str | None:
    """A one-line message for a failure the user can fix, or None for anything else."""
    chain = list(_chain(exc))
    where = f"the {store} store at {redact(db_url)}" if store and db_url else "the database"
    for e in chain:
        name = type(e).__name__
        if name == "UndefinedTableError" or _says(e, "no such table"):
            return f"{where} is not migrated; run `eventfold migrate`"
        if name == "UndefinedColumnError" or _says(e, "no such column", "has no column named"):
            return f"{where} is not migrated to the latest version; run `eventfold migrate`"
    for e in chain:
        if type(e).__name__ == "KafkaConnectionError":
            return f"cannot reach Kafka at {bootstrap}"
    for e in chain:
        # A bare timeout could be any wait (Kafka's too): it is not taken for the database.
        if (
            (isinstance(e, OSError) and not isinstance(e, TimeoutError))
            or type(e).__name__ in _CONNECT_REFUSALS
            or _says(e, "unable to open database file")
        ):
            return f"cannot reach {where}: {one_line(e)}"
    return None
