"""The memstate error hierarchy.

Every error an operator can meet derives from `MemstateError` and carries the exit code the CLI
maps it to (the codes follow sysexits(3); docs/operations.md lists them). Errors carry the facts
an operator needs to act: file and field path for bad input, file/offset/sequence for log damage,
pod/container/resource/bytes for admission problems.

Two rules:
- Domain refusals (a pod that does not fit) are *not* exceptions that leave the core: the reducer
  turns an `AdmissionError` into a `pod_rejected` decision event.
- `InvariantViolation` means memstate itself is wrong (or a log was written by an incompatible
  build). It is never caught to "keep going".
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_DATAERR = 65  # log or checkpoint corruption, malformed input files
EXIT_UNAVAILABLE = 69  # cgroup v2 or a required controller missing
EXIT_SOFTWARE = 70  # internal invariant failure
EXIT_IOERR = 74  # fsync / I/O failure on the log
EXIT_TEMPFAIL = 75  # state directory locked by another instance
EXIT_CONFIG = 78  # bad configuration

ECHO_CHARS = 100  # how much of an input value an error message repeats
_MAX_MESSAGE_CHARS = 1000


def echo(value: object, *, limit: int = ECHO_CHARS, quote: bool = True) -> str:
    """`value` as an error message may repeat it: at most `limit` characters of it, on one line,
    escaped (control characters, unpaired surrogates); a string is quoted unless `quote` is
    false."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 4 * limit:
        return f"<an integer of {value.bit_length()} bits>"  # str() would refuse or take long
    text = value if isinstance(value, str) else repr(value)
    shown = repr(text[:limit])
    if not quote or not isinstance(value, str):
        shown = shown[1:-1]
    if len(text) > limit:
        shown += f"... ({len(text)} characters)"
    return shown


def _one_safe_line(text: str) -> str:
    # Errors end up in events (msgpack needs valid UTF-8) and on one log line.
    if not text.isprintable():
        text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text[:_MAX_MESSAGE_CHARS])
    if not text.isascii():
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    if len(text) > _MAX_MESSAGE_CHARS:
        text = text[:_MAX_MESSAGE_CHARS] + "..."
    return text


class MemstateError(Exception):
    """Root of every error memstate raises on purpose."""

    exit_code: int = EXIT_FAILURE


class InputError(MemstateError):
    """Input that memstate cannot accept: a manifest, a config, a topology or scenario file.

    `source` names the file (or other origin) and `path` the field inside it, in msgspec's
    JSON-path notation (``$.spec.containers[0].resources.limits.memory``).
    """

    exit_code = EXIT_DATAERR

    def __init__(self, message: str, *, source: str = "", path: str = "") -> None:
        # Whatever a parser put into it, an input error is bounded, valid UTF-8, one line.
        self.message = _one_safe_line(message)
        self.source = _one_safe_line(source)
        self.path = _one_safe_line(path)
        super().__init__(self.describe())

    def describe(self) -> str:
        """One line: ``<source>: <path>: <message>``, leaving out what is unknown."""
        parts = [p for p in (self.source, self.path) if p]
        return ": ".join([*parts, self.message])

    def with_source(self, source: str) -> InputError:
        """The same error attributed to `source` (used when a parser learns the file name late)."""
        clone = type(self)(self.message, source=source, path=self.path)
        return clone


class QuantityError(InputError):
    """A Kubernetes quantity that is malformed, negative or absurdly large."""


class ManifestError(InputError):
    """A pod manifest that is malformed or violates Kubernetes validation rules."""


class TopologyError(InputError):
    """A NUMA topology (sysfs text or topology file) that is inconsistent."""


class ConfigError(InputError):
    """A node configuration that is malformed or inconsistent with the machine."""

    exit_code = EXIT_CONFIG


class ScenarioError(InputError):
    """A JSON-lines scenario or export line that cannot be turned into an event."""


class SourceError(InputError):
    """A pod source (kubelet `/pods`, the API server) answered with something unusable or not at
    all. `source` names the URL or the credentials file. Not fatal: the source retries and its
    last view stays in force."""

    exit_code = EXIT_UNAVAILABLE


class SchemaError(MemstateError):
    """A stored event or snapshot written by a newer or unknown schema."""

    exit_code = EXIT_DATAERR


class InvariantViolation(MemstateError):
    """memstate's own bookkeeping is inconsistent: a bug, or a log from an incompatible build."""

    exit_code = EXIT_SOFTWARE


class AdmissionError(MemstateError):
    """Internal to the core: why a pod cannot be admitted.

    `reason` is the upstream reason name (`UnexpectedAdmissionError`, `TopologyAffinityError`)
    so dashboards and runbooks written for the kubelet keep working.
    """

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        self.message = message
        super().__init__(f"{reason}: {message}")


class HostError(MemstateError):
    """A cgroupfs or sysfs operation failed.

    `errno` is the OS error number (None for a parse problem); `path` the cgroup or file; `op` the
    operation (read, write, mkdir, rmdir, list); `value` what was being written, if anything.
    """

    exit_code = EXIT_UNAVAILABLE

    def __init__(
        self,
        message: str,
        *,
        errno: int | None = None,
        path: str = "",
        op: str = "",
        value: str | None = None,
    ) -> None:
        self.message = message
        self.errno = errno
        self.path = path
        self.op = op
        self.value = value
        super().__init__(message)


class ReplayDivergence(MemstateError):
    """Replaying a log re-derived a decision that differs from the recorded one."""

    exit_code = EXIT_FAILURE


class LogCorruption(MemstateError):
    """The event log (or a checkpoint) is damaged.

    `file` is the segment or checkpoint, `offset` the byte offset of the first bad byte range (the
    start of the frame or header that fails), `seq` the sequence number expected there.
    """

    exit_code = EXIT_DATAERR

    def __init__(
        self, message: str, *, file: str = "", offset: int | None = None, seq: int | None = None
    ) -> None:
        self.message = message
        self.file = file
        self.offset = offset
        self.seq = seq
        super().__init__(self.describe())

    def describe(self) -> str:
        """One line: ``<file>: offset <n>: seq <n>: <message>``, leaving out what is unknown."""
        parts = [self.file] if self.file else []
        if self.offset is not None:
            parts.append(f"offset {self.offset}")
        if self.seq is not None:
            parts.append(f"seq {self.seq}")
        return ": ".join([*parts, self.message])


class TornTail(LogCorruption):
    """An incomplete write at the very end of the log: recoverable by truncation (never acked)."""


class MidLogCorruption(LogCorruption):
    """Damage that is not a torn tail: memstate refuses to start; a human must look."""


class CheckpointCorruption(LogCorruption):
    """A checkpoint file that fails its checks (start-up falls back to an older one)."""


class LockHeld(MemstateError):
    """The state directory's LOCK is held by another writer (a running daemon or repair)."""

    exit_code = EXIT_TEMPFAIL


class LogIOError(MemstateError):
    """An I/O failure on the log. After a failed fsync the log refuses every further call.

    `errno` is the OS error number when there is one.
    """

    exit_code = EXIT_IOERR

    def __init__(self, message: str, *, errno: int | None = None) -> None:
        self.errno = errno
        super().__init__(message)


class FileAccessError(MemstateError):
    """A file or directory a command reads or writes cannot be used: permission denied, a full
    disk, a missing directory. One line with the path and the operating system's reason."""

    exit_code = EXIT_IOERR

    def __init__(self, message: str, *, path: str = "", errno: int | None = None) -> None:
        self.message = message
        self.path = path
        self.errno = errno
        super().__init__(f"{path}: {message}" if path else message)

    @classmethod
    def from_os_error(cls, exc: OSError, action: str = "") -> FileAccessError:
        """`cannot <action>: <strerror>` naming the file the OS error is about."""
        reason = exc.strerror or str(exc)
        path = exc.filename if exc.filename is not None else ""
        if exc.filename2 is not None:
            path = f"{path} -> {exc.filename2}"
        message = f"cannot {action}: {reason}" if action else reason
        return cls(_one_safe_line(message), path=_one_safe_line(str(path)), errno=exc.errno)


class LogDiskFull(LogIOError):
    """ENOSPC/EDQUOT on append: nothing of the batch was acknowledged; the log stays usable."""
