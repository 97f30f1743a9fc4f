"""FaultInjectingCgroupFS: a CgroupFS wrapper that makes chosen operations fail.

Theory of operation
-------------------
The reconciler has to survive every error the kernel can return (EBUSY on rmdir, ENOENT when a
pod vanished mid-pass, EIO, EINTR...). Waiting for a real kernel to produce them is hopeless, so
this wrapper sits between the reconciler and any CgroupFS (usually a SimCgroupFS) and fails
operations on demand. A `FaultRule` says which operations it applies to (operation kind, and
fnmatch patterns on the cgroup path, the file and the written value), from which matching call
it starts (`nth`, 1-based, counted from when the rule was added) and how often it fires
(`times`; None means every matching call from then on). By default the fault replaces the
operation (nothing happens, then HostError); with ``after=True`` the operation is carried out
first and the error is raised anyway, the "it worked but the caller was told otherwise" case
that retries must tolerate.

Rules are checked in the order they were added; the first that fires wins. There is no
randomness inside: a randomised test draws rule parameters from its own seeded generator, so a
failing seed replays exactly. The wrapper also counts operations per kind and keeps a bounded log
of them with their outcome, for assertions such as "no write reached memory.max".

Note that fnmatch's ``*`` also matches ``/``: ``"kubepods/*"`` covers the whole subtree.
"""

from __future__ import annotations

import errno as errno_module
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import TypeVar

from memstate.core.errors import HostError
from memstate.host.cgroupfs import OPS, CgroupFS, host_error

_T = TypeVar("_T")
DEFAULT_LOG_LENGTH = 10_000


@dataclass
class FaultRule:
    """One injected fault; see the module docstring.

    `matched_count` counts matching operations while the rule is active (not exhausted) and
    `fired_count` how often it fired; both update live.
    """

    errno: int
    op: str | None = None
    path: str = "*"
    file: str = "*"
    value: str = "*"
    nth: int = 1
    times: int | None = 1
    after: bool = False
    matched_count: int = 0
    fired_count: int = 0

    def matches(self, op: str, path: str, file: str, value: str | None) -> bool:
        """True if an operation falls under this rule (ignoring nth/times)."""
        return (
            (self.op is None or self.op == op)
            and fnmatchcase(path, self.path)
            and fnmatchcase(file, self.file)
            and fnmatchcase(value if value is not None else "", self.value)
        )

    def exhausted(self) -> bool:
        """True once the rule has fired `times` times."""
        return self.times is not None and self.fired_count >= self.times


@dataclass(frozen=True)
class CallRecord:
    """One call seen by the wrapper: what was asked and how it ended (errno None = success)."""

    op: str
    path: str
    file: str
    value: str | None
    errno: int | None
    injected: bool


class FaultInjectingCgroupFS:
    """Wraps `inner` (any CgroupFS) and injects errors according to its rules."""

    def __init__(self, inner: CgroupFS, *, log_length: int = DEFAULT_LOG_LENGTH) -> None:
        self._inner = inner
        self._rules: list[FaultRule] = []
        self._counts: Counter[str] = Counter()
        self._log: deque[CallRecord] = deque(maxlen=log_length)

    @property
    def inner(self) -> CgroupFS:
        """The wrapped CgroupFS (use it for test hooks such as SimCgroupFS.spawn)."""
        return self._inner

    @property
    def rules(self) -> tuple[FaultRule, ...]:
        """The active rules, in the order they are checked."""
        return tuple(self._rules)

    @property
    def counts(self) -> dict[str, int]:
        """Operations seen per kind (``read``, ``write``...), failed and injected ones included."""
        return {op: self._counts[op] for op in OPS}

    @property
    def log(self) -> tuple[CallRecord, ...]:
        """The most recent operations (at most `log_length`), oldest first."""
        return tuple(self._log)

    def inject(
        self,
        code: int,
        *,
        op: str | None = None,
        path: str = "*",
        file: str = "*",
        value: str = "*",
        nth: int = 1,
        times: int | None = 1,
        after: bool = False,
    ) -> FaultRule:
        """Add a rule failing matching operations with errno `code`; returns it for inspection.

        `op` is one of ``exists``, ``list_children``, ``read``, ``write``, ``mkdir``, ``rmdir``
        or None for all. Operations without a file match `file` as ``""``, likewise `value`.
        ``inject(errno.EIO, nth=5)`` fails the 5th operation from now, whatever it is.
        """
        if op is not None and op not in OPS:
            raise ValueError(f"unknown operation {op!r}; expected one of {OPS}")
        if nth < 1 or (times is not None and times < 1):
            raise ValueError("nth and times count from 1")
        if code not in errno_module.errorcode:
            raise ValueError(f"{code} is not an errno value")
        rule = FaultRule(
            errno=code, op=op, path=path, file=file, value=value, nth=nth, times=times, after=after
        )
        self._rules.append(rule)
        return rule

    def remove(self, rule: FaultRule) -> None:
        """Drop one rule."""
        self._rules.remove(rule)

    def clear(self) -> None:
        """Drop every rule (counts and log are kept)."""
        self._rules.clear()

    def _firing_rule(self, op: str, path: str, file: str, value: str | None) -> FaultRule | None:
        firing: FaultRule | None = None
        for rule in self._rules:
            if rule.exhausted() or not rule.matches(op, path, file, value):
                continue
            rule.matched_count += 1
            if firing is None and rule.matched_count >= rule.nth:
                firing = rule
        if firing is not None:
            firing.fired_count += 1
        return firing

    def _call(
        self, op: str, path: str, file: str, value: str | None, action: Callable[[], _T]
    ) -> _T:
        self._counts[op] += 1
        rule = self._firing_rule(op, path, file, value)
        if rule is not None and not rule.after:
            self._log.append(CallRecord(op, path, file, value, rule.errno, injected=True))
            raise host_error(rule.errno, op, path, file, value=value, detail="injected fault")
        try:
            result = action()
        except HostError as exc:
            self._log.append(CallRecord(op, path, file, value, exc.errno, injected=False))
            raise
        if rule is not None:
            self._log.append(CallRecord(op, path, file, value, rule.errno, injected=True))
            raise host_error(
                rule.errno, op, path, file, value=value, detail="injected fault after the operation"
            )
        self._log.append(CallRecord(op, path, file, value, None, injected=False))
        return result

    def exists(self, path: str) -> bool:
        """CgroupFS.exists through the rules."""
        return self._call("exists", path, "", None, lambda: self._inner.exists(path))

    def list_children(self, path: str) -> list[str]:
        """CgroupFS.list_children through the rules."""
        return self._call("list_children", path, "", None, lambda: self._inner.list_children(path))

    def read(self, path: str, file: str) -> str:
        """CgroupFS.read through the rules."""
        return self._call("read", path, file, None, lambda: self._inner.read(path, file))

    def write(self, path: str, file: str, value: str) -> None:
        """CgroupFS.write through the rules."""
        self._call("write", path, file, value, lambda: self._inner.write(path, file, value))

    def mkdir(self, path: str) -> None:
        """CgroupFS.mkdir through the rules."""
        self._call("mkdir", path, "", None, lambda: self._inner.mkdir(path))

    def rmdir(self, path: str) -> None:
        """CgroupFS.rmdir through the rules."""
        self._call("rmdir", path, "", None, lambda: self._inner.rmdir(path))
