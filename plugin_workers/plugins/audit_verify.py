"""``verify_archive``: the audit table verified as the stream is (``replay --verify --archive``).

Each row keeps the event as it travelled (the encoded envelope and its signatures), so
with the whole keyring it is checked like a stream entry: signed by a registry's key
(or, for a plugin's own ``custom`` event, by that plugin's), else ``forged`` or
``altered``. Then the columns the event decides (time, registry, app, type, event id,
seq, payload, replay) are compared with the signed event: a column edited in place is
``altered``. Then every registry's chain: a row deleted from between two present is
``missing``. A row written from a copy (a replay, a re-drive) stands in for its original
in the chain.

Not covered: the columns the audit worker adds of its own (``acks``, ``consumer``,
``recorded``, ``id``); rows deleted from the very end of a chain; the chains of custom
events (the plugin records only the custom events its configuration names, so their
numbers have gaps by design); and an archive that began after a registry's chain did
shows that chain's start as missing (replay those events to the audit plugin to fill
it in, or verify with ``since``).
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime
from typing import Any

import msgspec
from sqlalchemy import RowMapping

from rapid_objection.bus._contract import decode_envelope
from rapid_objection.bus._heads import EnvelopeHead
from rapid_objection.bus._keyring import Keyring
from rapid_objection.bus._verify import Audit, Verifier

from .audit_store import AuditStore, event_columns

FETCH_ROWS = 1_000
"""Rows fetched at a time."""


def verify_archive(
    store: AuditStore,
    keyring: Keyring | None,
    *,
    since: float | datetime | None = None,
    until: float | datetime | None = None,
    app: str | None = None,
    types: Collection[str] = (),
) -> Audit:
    """Check every row of ``store`` in the window (of ``app`` and ``types``: the others
    only take their place in the chains), and every registry's chain (synchronous)."""
    verifier = Verifier(keyring, noun="row", order=int)
    if not store.exists():
        return verifier.finish()
    table = store.table
    statement = store.select(since=since, until=until).order_by(table.c.id)
    with store.engine.connect() as connection:
        result = connection.execution_options(yield_per=FETCH_ROWS).execute(statement).mappings()
        for row in result:
            selected = (app is None or row["app"] == app) and (not types or row["type"] in types)
            _check_row(verifier, row, selected=selected)
    return verifier.finish(whole=since is None, chains=_lifecycle_chain)


def _check_row(verifier: Verifier, row: RowMapping, *, selected: bool) -> None:
    ref = str(row["id"])
    data, signatures = row["envelope"], row["signatures"]
    if data is None:
        if selected:
            verifier.audit.checked += 1
            verifier.problem(
                "forged",
                "the row keeps no signed event (written before the audit plugin kept "
                "them, or its envelope column was emptied)",
                ref,
                None,
            )
        return
    head = verifier.check(
        ref,
        bytes(data),
        None if signatures is None else bytes(signatures),
        selected=selected,
        stands_in=True,
    )
    if not selected or head is None or ref in verifier.flagged:
        return
    changed = _changed_columns(bytes(data), head, row)
    if changed:
        verifier.problem(
            "altered",
            f"column{'s' if len(changed) > 1 else ''} {', '.join(changed)} of the row "
            "differ from the signed event",
            ref,
            head,
        )


def _changed_columns(data: bytes, head: EnvelopeHead, row: RowMapping) -> list[str]:
    """The columns of ``row`` that say something else than the signed event."""
    try:
        expected = event_columns(decode_envelope(data))
    except (msgspec.DecodeError, msgspec.ValidationError, ValueError):
        # A newer schema than this program knows: compare what the head says.
        expected = {
            "registry": head.registry,
            "app": head.app,
            "type": head.type,
            "seq": head.seq,
            "replay": head.replay,
        }
    changed = []
    for name, value in expected.items():
        stored = row[name]
        if name == "payload":
            # Compared as values: the same JSON however a database spaces it.
            same = _json(stored) == _json(value)
        elif name == "replay":
            same = bool(stored) == value
        else:
            same = stored == value
        if not same:
            changed.append(name)
    return changed


def _json(text: str) -> Any:
    try:
        return msgspec.json.decode(text)
    except msgspec.DecodeError:
        return msgspec.UNSET  # never equal to a decoded value


def _lifecycle_chain(chain: str, heads: list[EnvelopeHead]) -> bool:
    """Whether gaps in this chain mean something: it is a registry's (lifecycle events),
    not a plugin's custom events, of which the audit keeps only those it is told to."""
    return not any(head.type == "custom" for head in heads)
