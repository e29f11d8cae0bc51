"""Enforcing a :class:`~wr124_session_actor.RetentionPolicy` where the data is: the sweep, in SQL.

One algorithm for every SQL engine (sqlite, PostgreSQL); an engine supplies a :data:`Transact` (run a
function on its connection in one transaction) and a :class:`Dialect` (placeholders, body size, time
values). The engines' ``prune`` methods call :func:`prune_documents`.

How a sweep stays safe and cheap:

- It goes session by session, and deletes in batches of at most ``batch_size`` rows, one short
  transaction each, so writers wait at most one batch.
- Each batch picks its rows and deletes them in one transaction, by the policy's rule as of the
  moment the sweep reached the agent (its states below the ``keep_last``-th newest ``seq``, or older
  than ``max_age`` and below its newest; an idle session's ``DELETE`` re-checks that it had no write
  since the cutoff). Several sweepers (server replicas, the CLI) may run at once: a row one of them
  removes is one the policy removes anyway, since a state written meanwhile only ever makes older rows
  more removable, never a newer one; a session that gets a write while it is being removed as idle
  stops being removed.
- A time budget (the periodic sweep's, and the trim after a write's) is checked between batches, so a
  large backlog (``keep_last`` set on a big store) is removed over several writes, never in one.
- A sweep removes only states that existed when it reached their session (``seq`` at most the
  session's highest then), so it ends even while writers keep adding states faster than it deletes.
- ``seq`` grows per session in commit order, so "the N newest" is the N highest ``seq`` of an agent;
  a sweep run after a batch of writes never leaves fewer than N states of an agent.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final, TypeVar

import structlog

from .._document import EncodedDocument
from .._retention import PRUNE_BATCH, PruneReport, RetentionPolicy
from ._base import DocumentEngine

__all__ = [
    "POSTGRES_DIALECT",
    "SQLITE_DIALECT",
    "Dialect",
    "RetentionSweeper",
    "Transact",
    "prune_documents",
]

logger = structlog.get_logger(__name__)

T = TypeVar("T")

#: Runs a function on the engine's connection inside one transaction and returns its result.
Transact = Callable[[Callable[[Any], T]], T]


@dataclass(frozen=True, slots=True)
class Dialect:
    """What differs between the SQL engines for the sweep.

    Args:
        table: the documents table (columns project, id, session_id, agent, seq, created_at, body).
        param: the placeholder (``?`` or ``%s``).
        size: the SQL expression for a row's stored body size in bytes.
        time: turns a UTC datetime into the value ``created_at`` compares with.
        forget_session: a statement (params: project, session_id) run after a session was removed
            whole, in the transaction that removed its last documents, when no document is left.
        id_array: pass a batch's ids as one array parameter (``id = ANY(%s)``) rather than one
            parameter each (``id IN (?, ?, ...)``).
    """

    table: str
    param: str
    size: str
    time: Callable[[datetime], object]
    forget_session: str | None = None
    id_array: bool = False

    def ids(self, ids: list[object]) -> tuple[str, list[object]]:
        """The condition "``id`` is one of ``ids``" and its parameters."""
        if self.id_array:
            return f"id = ANY({self.param})", [ids]
        return f"id IN ({', '.join([self.param] * len(ids))})", ids


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


#: sqlite: ``created_at`` is normalized ISO-8601 text, the body a BLOB.
SQLITE_DIALECT: Final = Dialect("documents", "?", "length(body)", _iso)
#: PostgreSQL (psycopg): ``created_at`` is a ``timestamptz``, the body ``jsonb`` (its size: as JSON text);
#: a session removed whole also loses its ``seq`` counter row, its last ``seq`` kept as the project's floor.
POSTGRES_DIALECT: Final = Dialect(
    "wr124_documents", "%s", "octet_length(body::text)", lambda moment: moment,
    forget_session="WITH gone AS (DELETE FROM wr124_session_seqs AS s WHERE s.project = %s AND s.session_id = %s"
    " AND NOT EXISTS (SELECT 1 FROM wr124_documents AS d WHERE d.project = s.project AND d.session_id = s.session_id)"
    " RETURNING s.project, s.last_seq)"
    " INSERT INTO wr124_seq_floors AS f (project, floor) SELECT project, last_seq FROM gone"
    " ON CONFLICT (project) DO UPDATE SET floor = greatest(f.floor, excluded.floor)",
    id_array=True,
)


def prune_documents(
    transact: Transact[Any],
    dialect: Dialect,
    project: str | None,
    policy: RetentionPolicy,
    *,
    session_id: str | None = None,
    dry_run: bool = False,
    now: datetime | None = None,
    batch_size: int = PRUNE_BATCH,
    time_budget: float | None = None,
    start_after: tuple[str, str] | None = None,
) -> PruneReport:
    """Apply ``policy`` to the ``documents`` table, in batches; return what was (or would be) removed.

    Args:
        transact: runs a function on the connection in one transaction (the engine's).
        dialect: the engine's SQL differences.
        project: the project to sweep; ``None`` sweeps every project.
        policy: what goes (see :class:`~wr124_session_actor.RetentionPolicy`).
        session_id: only this session.
        dry_run: count what would go, remove nothing.
        now: the time ages are measured from (default: the current time); tests pass their own.
        batch_size: the most rows one transaction deletes.
        time_budget: stop after about this many seconds (the report then has ``complete=False``, and
            ``resume_after`` the session it stopped in or after).
        start_after: begin after this ``(project, session_id)``, going round to the sessions before it: a
            sweep that goes on from where the last one stopped reaches every session, even when the first
            ones always have something to remove (restarted from the first, it kept removing theirs).

    Returns:
        Sessions removed whole, documents and bytes removed (or that would be).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    report = PruneReport(dry_run=dry_run)
    if not policy.enabled:
        return report
    moment = datetime.now(UTC) if now is None else now
    started = time.monotonic()
    deadline = None if time_budget is None else started + time_budget
    sweep = _Sweep(transact, dialect, policy, moment, batch_size, dry_run, deadline)
    sessions = transact(lambda conn: sweep.sessions(conn, project, session_id))
    if start_after is not None:
        first = bisect.bisect_right(sessions, start_after, key=lambda row: (row[0], row[1]))
        sessions = sessions[first:] + sessions[:first]
    for index, (proj, sid, idle, top_seq) in enumerate(sessions):
        done = sweep.remove_session(proj, sid) if idle else sweep.trim_session(proj, sid, top_seq)
        report += done
        # The budget stops a sweep between two batches of one session, or right after a session that had
        # something to remove. The next one goes on with the session after it: one with a backlog that
        # writers keep adding to is finished round by round (and by the trims after its writes), not
        # before every other session.
        if not done.complete or (deadline is not None and done.documents and index + 1 < len(sessions)
                                 and time.monotonic() > deadline):
            return PruneReport(report.sessions, report.documents, report.bytes, dry_run, complete=False,
                               resume_after=(proj, sid))
    return report


def _before(now: datetime, seconds: float) -> datetime:
    """``seconds`` before ``now``; a duration reaching past year 1 gives year 1 (nothing is older)."""
    try:
        return now - timedelta(seconds=seconds)
    except OverflowError:
        return datetime.min.replace(tzinfo=UTC)


class _Sweep:
    """The statements of one sweep (one policy, one moment)."""

    def __init__(self, transact: Transact[Any], dialect: Dialect, policy: RetentionPolicy, now: datetime,
                 batch_size: int, dry_run: bool, deadline: float | None = None) -> None:
        self.transact = transact
        self.deadline = deadline  # time.monotonic() past which no further batch starts
        self.dialect = dialect
        self.t = dialect.table
        self.p = dialect.param
        self.size = dialect.size
        self.batch_size = batch_size
        self.dry_run = dry_run
        self.keep_last = policy.keep_last
        self.idle_cutoff = None if policy.idle_ttl is None else dialect.time(_before(now, policy.idle_ttl))
        self.age_cutoff = None if policy.max_age is None else dialect.time(_before(now, policy.max_age))

    def sessions(self, conn: Any, project: str | None, session_id: str | None) -> list[tuple[str, str, bool, int]]:
        """Every session in scope, with whether it is idle (no write since the idle cutoff) and its
        highest ``seq`` now (the sweep touches no row written after it started)."""
        p = self.p
        where = ["session_id IS NOT NULL", "session_id <> ''"]
        args: list[object] = []
        if self.idle_cutoff is None:
            idle = "0"
        else:
            idle = f"CASE WHEN max(created_at) < {p} THEN 1 ELSE 0 END"
            args.append(self.idle_cutoff)
        if project is not None:
            where.append(f"project = {p}")
            args.append(project)
        if session_id is not None:
            where.append(f"session_id = {p}")
            args.append(session_id)
        rows = conn.execute(
            f"SELECT project, session_id, {idle}, max(seq) FROM {self.t} WHERE {' AND '.join(where)}"
            " GROUP BY project, session_id",
            args,
        ).fetchall()
        # Sorted here, in the order the resuming sweep bisects by: a database's collation (ICU, en_US) orders
        # text otherwise, and a sweep resumed after "B" in it went round "a", "c" only.
        return sorted((str(proj), str(sid), bool(flag), int(top)) for proj, sid, flag, top in rows)

    def remove_session(self, project: str, session_id: str) -> PruneReport:
        """Remove a whole idle session; stop if it gets a write meanwhile."""
        t, p = self.t, self.p
        if self.dry_run:
            count, size = self.transact(lambda conn: conn.execute(
                f"SELECT count(*), coalesce(sum({self.size}), 0) FROM {t} WHERE project = {p} AND session_id = {p}",
                (project, session_id)).fetchone())
            return PruneReport(1, int(count), int(size), dry_run=True)
        batch = f"SELECT id FROM {t} WHERE project = {p} AND session_id = {p} LIMIT {p}"
        recent = (f"NOT EXISTS (SELECT 1 FROM {t} AS recent WHERE recent.project = {p}"
                  f" AND recent.session_id = {p} AND recent.created_at >= {p})")
        documents, size, complete = self._delete_batches(batch, (project, session_id, self.batch_size), project,
                                                         recent, (project, session_id, self.idle_cutoff))
        gone = complete and documents > 0 and self.transact(lambda conn: self._forget(conn, project, session_id))
        return PruneReport(int(gone), documents, size, complete=complete)

    def _forget(self, conn: Any, project: str, session_id: str) -> bool:
        """Whether the session has no document left; if so, drop what the engine keeps per session."""
        left = conn.execute(f"SELECT 1 FROM {self.t} WHERE project = {self.p} AND session_id = {self.p} LIMIT 1",
                            (project, session_id)).fetchone()
        if left is None and self.dialect.forget_session is not None:
            conn.execute(self.dialect.forget_session, (project, session_id))
        return left is None

    def trim_session(self, project: str, session_id: str, top_seq: int) -> PruneReport:
        """Remove the states of a live session that ``keep_last``/``max_age`` remove, among those with
        ``seq <= top_seq`` (so that a sweep ends even while writers keep adding states).

        Each agent's bounds are read once: its newest ``seq``, and the ``keep_last``-th newest. Every
        batch then picks rows below them through the (session, agent, seq) index, in time proportional
        to the batch (ranking the agent's states again for each batch made a large trim quadratic).
        States written since count: they only make older ones more removable.
        """
        report = PruneReport(dry_run=self.dry_run)
        if not self.keep_last and self.age_cutoff is None:
            return report
        for agent, newest, kept_from in self.transact(lambda conn: self._agent_bounds(conn, project, session_id)):
            rules: list[str] = []
            rule_args: list[object] = []
            if kept_from is not None:
                rules.append(f"seq < {self.p}")
                rule_args.append(kept_from)
            if self.age_cutoff is not None:
                rules.append(f"(created_at < {self.p} AND seq < {self.p})")
                rule_args += [self.age_cutoff, newest]
            if not rules:
                continue
            report += self._trim_agent(project, session_id, agent, top_seq, rules, rule_args)
            if not report.complete:
                break
        return report

    def _agent_bounds(self, conn: Any, project: str, session_id: str) -> list[tuple[str, int, int | None]]:
        """``(agent, newest seq, seq of the keep_last-th newest or None)`` of every agent of the session
        with more than one state."""
        t, p = self.t, self.p
        agents = conn.execute(
            f"SELECT agent, max(seq), count(*) FROM {t} WHERE project = {p} AND session_id = {p}"
            " AND agent IS NOT NULL GROUP BY agent HAVING count(*) > 1 ORDER BY agent",
            (project, session_id),
        ).fetchall()
        bounds: list[tuple[str, int, int | None]] = []
        for agent, newest, count in agents:
            kept_from = None
            if self.keep_last and count > self.keep_last:
                row = conn.execute(
                    f"SELECT seq FROM {t} WHERE project = {p} AND session_id = {p} AND agent = {p}"
                    f" ORDER BY seq DESC LIMIT 1 OFFSET {p}",
                    (project, session_id, agent, self.keep_last - 1),
                ).fetchone()
                kept_from = None if row is None else int(row[0])
            bounds.append((str(agent), int(newest), kept_from))
        return bounds

    def _trim_agent(self, project: str, session_id: str, agent: str, top_seq: int, rules: list[str],
                    rule_args: list[object]) -> PruneReport:
        t, p = self.t, self.p
        where = (f"project = {p} AND session_id = {p} AND agent = {p} AND seq <= {p}"
                 f" AND ({' OR '.join(rules)})")
        args = [project, session_id, agent, top_seq, *rule_args]
        if self.dry_run:
            count, total = self.transact(lambda conn: conn.execute(
                f"SELECT count(*), coalesce(sum({self.size}), 0) FROM {t} WHERE {where}", args).fetchone())
            return PruneReport(0, int(count), int(total), dry_run=True)
        documents, removed, complete = self._delete_batches(
            f"SELECT id FROM {t} WHERE {where} ORDER BY seq LIMIT {p}", (*args, self.batch_size), project)
        return PruneReport(0, documents, removed, complete=complete)

    def _delete_batches(self, select: str, select_args: Iterable[object], project: str, condition: str = "",
                        condition_args: Iterable[object] = ()) -> tuple[int, int, bool]:
        """Delete in batches until one comes back short or the deadline passes: each transaction selects
        a batch of ids (``select``), then deletes those of them that meet ``condition``; return rows,
        bytes, and whether it got to the end.

        Two statements, not ``DELETE ... WHERE id IN (SELECT ... LIMIT n)``: PostgreSQL may plan
        that as a scan of the whole project re-running the subquery per row.
        """
        select_params, condition_params = tuple(select_args), tuple(condition_args)
        where = f"project = {self.p}" + (f" AND {condition}" if condition else "")

        def batch(conn: Any) -> list[Any]:
            ids = [row[0] for row in conn.execute(select, select_params).fetchall()]
            if not ids:
                return []
            in_batch, id_params = self.dialect.ids(ids)
            return list(conn.execute(f"DELETE FROM {self.t} WHERE {where} AND {in_batch} RETURNING {self.size}",
                                     [project, *condition_params, *id_params]).fetchall())

        documents = size = 0
        while True:
            sizes = self.transact(batch)
            documents += len(sizes)
            size += sum(int(row[0] or 0) for row in sizes)
            if len(sizes) < self.batch_size:
                return documents, size, True
            if self.deadline is not None and time.monotonic() > self.deadline:
                return documents, size, False


class RetentionSweeper:
    """Keeps a store within a policy: keep-last right after writes, everything else periodically.

    Synchronous (call it from the worker thread that ran the write); safe to share between threads.

    Args:
        engine: the engine to prune.
        policy: the retention policy.
        interval: seconds between periodic sweeps (:meth:`sweep_if_due`).
        time_budget: seconds one periodic sweep may take before it stops and stays due (so that the
            write that triggered it is not held up long).
        clock: a monotonic clock (tests pass their own).
    """

    def __init__(
        self,
        engine: DocumentEngine,
        policy: RetentionPolicy,
        *,
        interval: float = 60.0,
        time_budget: float = 0.25,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.engine = engine
        self.policy = policy
        self.interval = interval
        self.time_budget = time_budget
        self._clock = clock
        self._lock = threading.Lock()
        self._next_sweep = clock() + interval
        #: Per project swept, where the last sweep that ran out of its budget stopped (the next goes on there).
        self._resume: dict[str | None, tuple[str, str] | None] = {}

    def after_write(self, project: str, docs: Iterable[EncodedDocument]) -> PruneReport:
        """Trim the sessions just written to ``keep_last`` states per agent (nothing when it is 0)."""
        report = PruneReport()
        if not self.policy.keep_last:
            return report
        trim = RetentionPolicy(keep_last=self.policy.keep_last, max_age=self.policy.max_age)
        deadline = self._clock() + self.time_budget
        for session_id in sorted({doc.session_id for doc in docs if doc.session_id}):
            report += self.engine.prune(project, trim, session_id=session_id,
                                        time_budget=max(0.0, deadline - self._clock()))
            if not report.complete:  # a long backlog (keep_last set on a large store): the sweep goes on with it
                with self._lock:
                    self._next_sweep = self._clock()
                break
        if report.documents:
            logger.debug("retention_keep_last", project=project, documents=report.documents, bytes=report.bytes)
        return report

    def after_insert(self, project: str, docs: Iterable[EncodedDocument]) -> None:
        """What a store runs after each successful write: :meth:`after_write`, then :meth:`sweep_if_due` (each
        within ``time_budget``: a sweep due is not left for later because the trim ran out of its budget, or a
        store too busy to trim in time never removed an idle session).

        The write is already stored; a failing sweep is logged (warning) and left for the next time.
        """
        if not self.policy.enabled:
            return
        try:
            self.after_write(project, docs)
            self.sweep_if_due(project)
        except Exception as exc:
            logger.warning("retention_sweep_failed", project=project, error=f"{type(exc).__name__}: {exc}")

    def sweep_if_due(self, project: str | None) -> PruneReport | None:
        """Sweep ``project`` by the whole policy when ``interval`` has passed since the last sweep.

        One caller at a time claims a due sweep; the others return ``None`` at once. A sweep that
        runs out of its time budget stays due, and the next call goes on with it, from the session where it
        stopped.
        """
        if not self.policy.enabled:
            return None
        with self._lock:
            now = self._clock()
            if now < self._next_sweep:
                return None
            self._next_sweep = now + self.interval
            start_after = self._resume.get(project)
        report = self.engine.prune(project, self.policy, time_budget=self.time_budget, start_after=start_after)
        with self._lock:
            self._resume[project] = report.resume_after
            if not report.complete:
                self._next_sweep = self._clock()
        logger.debug("retention_sweep", project=project, sessions=report.sessions, documents=report.documents,
                     bytes=report.bytes, complete=report.complete)
        return report
