"""The audit of signed events with a whole keyring (``replay --verify``).

Every event is checked against the keys: signed by a registry's key (or, for a plugin's
own ``custom`` event, by that plugin's), or else ``altered`` (a key we know signed other
bytes) or ``forged`` (no key of ours signed it). Then each publisher's chain: its events
are numbered (``seq``) and each names its predecessor's digest (``link.prev``), so an
event deleted from between two that are present shows as ``missing``, unless the trim
records say retention removed it.

``Verifier`` does both for events fed to it one by one, wherever they are kept: the
stream (``verify_history``) or the audit plugin's table (its ``verify_archive``).

What this cannot see: events deleted from the very end of a chain (nothing after them
names them), and, with ``since``, events deleted just before the window.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any, Literal

from ._bus import Bus
from ._constants import EVENT_FIELD, SIGNATURE_FIELD
from ._errors import KeyringError
from ._heads import EnvelopeHead, decode_head
from ._history import time_to_id
from ._ids import id_key
from ._keyring import Keyring
from ._signatures import digest
from ._trims import trimmed_chains

PAGE: int = 1_000
"""Entries per XRANGE."""

ProblemKind = Literal["forged", "altered", "missing"]


@dataclass(frozen=True, slots=True)
class Problem:
    kind: ProblemKind
    detail: str
    entry_id: str | None = None
    """Where the event is kept: its stream entry id (or, in an archive, its row id)."""
    event_id: str | None = None
    registry: str = ""


@dataclass
class Audit:
    """What a verification found."""

    checked: int = 0
    verified: int = 0
    chains: int = 0
    trimmed: int = 0
    """Events the trim records say retention removed (not reported as missing)."""
    problems: list[Problem] = field(default_factory=list)
    noun: str = "entry"
    """What ``Problem.entry_id`` numbers: a stream ``entry`` or an archive's ``row``."""

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass(frozen=True, slots=True)
class _Link:
    seq: int
    prev: bytes | None
    digest: bytes | None
    """None for a copy standing in for its original (an archive's row of a replay): its
    own bytes are not what its successor names."""
    entry_id: str
    head: EnvelopeHead


class Verifier:
    """Checks events one at a time (``check``), then the chains they form (``finish``)."""

    def __init__(
        self,
        keyring: Keyring | None,
        *,
        noun: str = "entry",
        order: Callable[[str], Any] = id_key,
    ) -> None:
        if keyring is None or keyring.plugin is not None:
            raise KeyringError("verifying events needs the whole keyring (--keyring PATH)")
        self.keyring = keyring
        self.audit = Audit(noun=noun)
        self._order = order
        self._chains: dict[str, list[_Link]] = {}
        self.flagged: set[str] = set()
        """The entries reported already."""

    def problem(
        self, kind: ProblemKind, detail: str, entry_id: str, head: EnvelopeHead | None
    ) -> None:
        """Report ``entry_id`` (checked already, or not to be checked at all)."""
        self.flagged.add(entry_id)
        self.audit.problems.append(
            Problem(
                kind, detail, entry_id, head.id if head else None, head.registry if head else ""
            )
        )

    def check(
        self,
        entry_id: str,
        data: bytes,
        signatures: bytes | None,
        *,
        selected: bool = True,
        stands_in: bool = False,
    ) -> EnvelopeHead | None:
        """Check one event's signature (when ``selected``) and note its place in its chain;
        its head, None when not even that decodes. ``stands_in``: a copy kept in place of
        its original (it takes the original's place in the chain, but not its digest)."""
        head = decode_head(data)
        if selected:
            self.audit.checked += 1
            verdict = self.keyring.audit_event(data, signatures)
            if verdict.signer is not None:
                self.audit.verified += 1
            else:
                kind: ProblemKind = "forged" if verdict.status == "forged" else "altered"
                self.problem(kind, verdict.reason, entry_id, head)
        if head is not None and head.link is not None and (head.replaces is None or stands_in):
            # An altered event still holds its place: its successors are not missing.
            own = None if head.replaces is not None else digest(data)
            link = _Link(head.seq, head.link.prev, own, entry_id, head)
            self._chains.setdefault(head.link.chain, []).append(link)
        return head

    def finish(
        self,
        trimmed: dict[str, int] | None = None,
        *,
        whole: bool = True,
        chains: Callable[[str, list[EnvelopeHead]], bool] | None = None,
    ) -> Audit:
        """Check the chains (those ``chains`` accepts, given their events' heads) and
        return the audit. ``trimmed``: per chain the last seq retention removed;
        ``whole``: the events fed start where each chain starts."""
        audit = self.audit
        audit.chains = len(self._chains)
        for chain, links in self._chains.items():
            if chains is not None and not chains(chain, [link.head for link in links]):
                continue
            self._check_chain(
                chain,
                sorted(links, key=lambda link: link.seq),
                (trimmed or {}).get(chain, 0),
                whole=whole,
            )
        audit.problems.sort(
            key=lambda p: self._order(p.entry_id) if p.entry_id else self._order("0")
        )
        return audit

    def _check_chain(self, chain: str, links: list[_Link], trimmed: int, *, whole: bool) -> None:
        first = links[0]
        registry = first.head.registry
        if whole and first.seq > 1:
            explained = min(trimmed, first.seq - 1)
            self.audit.trimmed += explained
            if first.seq - 1 > explained:
                self._missing(registry, chain, (explained + 1, first.seq - 1), None, first)
        for before, after in itertools.pairwise(links):
            if after.seq > before.seq + 1:
                self._missing(registry, chain, (before.seq + 1, after.seq - 1), before, after)
            elif (
                after.seq == before.seq + 1
                and before.digest is not None
                and after.prev != before.digest
                and before.entry_id not in self.flagged
            ):
                self.problem(
                    "altered",
                    f"event {before.head.id} (seq {before.seq} of chain {chain}) is not the "
                    f"one event {after.head.id} follows",
                    before.entry_id,
                    before.head,
                )

    def _missing(
        self,
        registry: str,
        chain: str,
        seqs: tuple[int, int],
        before: _Link | None,
        after: _Link,
    ) -> None:
        low, high = seqs
        count = high - low + 1
        noun = self.audit.noun
        which = f"seq {low}" if count == 1 else f"seq {low} to {high}"
        where = f"after {noun} {before.entry_id} and " if before is not None else ""
        self.audit.problems.append(
            Problem(
                "missing",
                f"{count} event{'s' if count > 1 else ''} of registry {registry!r} ({which} of "
                f"chain {chain}) {where}before {noun} {after.entry_id}",
                after.entry_id,
                None,
                registry,
            )
        )


async def verify_history(
    bus: Bus,
    *,
    since: float | None = None,
    until: float | None = None,
    app: str | None = None,
    types: Collection[str] = (),
) -> Audit:
    """Check every entry of the stream in the window, and every publisher chain in it.
    Copies (replays, re-drives) are checked for their signature but belong to no chain."""
    verifier = Verifier(bus.keyring)
    start = time_to_id(since) if since is not None else "-"
    end = f"{int(until * 1000)}-18446744073709551615" if until is not None else "+"
    while True:
        page = await bus.redis.xrange(bus.keys.events, start, end, PAGE)
        for entry_id, fields in page:
            start = f"({entry_id}"
            data = fields.get(EVENT_FIELD, b"")
            head = decode_head(data)
            selected = head is None or (
                (app is None or head.app == app) and (not types or head.type in types)
            )
            verifier.check(entry_id, data, fields.get(SIGNATURE_FIELD), selected=selected)
        if len(page) < PAGE:
            break
    trimmed, _ = await trimmed_chains(bus, verifier.keyring)
    return verifier.finish(trimmed, whole=since is None)
