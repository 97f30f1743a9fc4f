"""The deterministic simulation of the whole daemon, in one process (tests/sim).

Theory of operation
-------------------
`simulate(seed)` builds a world from a seed: an in-memory disk (`SimDisk`: records are buffered
until fsync, a crash drops what was not synced and may keep a torn prefix of the batch being
written), a SimCgroupFS behind a FaultInjectingCgroupFS behind an every-instant protection check,
a pod source in memory, and trio's `MockClock` (autojump) as the only clock; file I/O runs
inline, so nothing crosses a thread and one seed always runs the same way (trio's scheduler
shuffle is seeded too). It then runs a few *lives* of the daemon (`Daemon.run` with
`Adapters` pointing at the world); during each it draws steps: pod churn of every QoS class,
disk full, cgroupfs faults, drift (another writer changes a managed value), clock jumps. A life
ends with a clean stop (final checkpoint), a crash at a random await point (the daemon's scope
is cancelled, nothing more is written) or a crash in the middle of an append (torn tail). The
next life readmits the pods in a shuffled order.

After every step: no NUMA overcommit (`check_invariants`), every pod acknowledged (present in
the durable state) keeps its allocation across restarts while its source still lists it, no
protection write left a parent below the sum of its children (checked after every write); at
the end, with the faults stopped, the tree converges (`diff_tree` shows nothing pending).
A failure is a `SimFailure` naming the seed and the command that reruns it.
"""

from __future__ import annotations

import errno
import functools
import random
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import trio
import trio.testing

from memstate.core.errors import HostError, InvariantViolation, LogDiskFull
from memstate.core.events import SCHEMA_VERSION, Envelope, Event
from memstate.core.invariants import check_invariants
from memstate.core.numa_policy import PodAllocation
from memstate.core.plan import PROTECTION_FILES, ObservedCgroup, ObservedTree, diff_tree
from memstate.core.pod import pod_from_manifest
from memstate.core.reducer import apply
from memstate.core.removals import NO_REMOVALS, PendingRemovals, fold_removals
from memstate.core.state import State
from memstate.host.sim import FaultInjectingCgroupFS, SimCgroupFS
from memstate.node.adapters import Adapters, OpenedLog
from memstate.node.daemon import Daemon
from memstate.node.sdnotify import Notifier
from memstate.node.settings import Settings
from memstate.node.sources.observation import ObservedPod
from memstate.reconcile.reconciler import observe_tree
from memstate.store.recovery import Recovered
from memstate.testing import protection_shortfalls
from tests.factories import manifest, topology
from tests.reconcile.helpers import tree_snapshot

_T = TypeVar("_T")
PAGE = 4096
Gi = 2**30
Mi = 2**20
RERUN = (
    "MEMSTATE_SIM_SEED={seed} .venv/bin/python -m pytest tests/sim -q -p no:cacheprovider -k replay"
)


class SimFailure(AssertionError):
    """An invariant broke in the simulation of `seed`."""

    def __init__(self, seed: int, message: str) -> None:
        self.seed = seed
        super().__init__(f"seed {seed}: {message}\nrerun: {RERUN.format(seed=seed)}")


class SimCrash(Exception):
    """The simulated machine lost power in the middle of an append."""


# --- the disk -------------------------------------------------------------------------------------


@dataclass
class SimDisk:
    """What survives a crash: synced records and the last checkpoint. See the module docstring."""

    rng: random.Random
    synced: list[Envelope] = field(default_factory=list)
    unsynced: list[Envelope] = field(default_factory=list)
    checkpoint: tuple[State, int, PendingRemovals] | None = None
    full: bool = False
    tear_next_append: bool = False

    def crash(self) -> None:
        """Power loss: buffered records are gone."""
        self.unsynced.clear()


class SimLog:
    """The event log on a `SimDisk` (the writer's LogAppender)."""

    def __init__(self, disk: SimDisk) -> None:
        self.disk = disk

    @property
    def last_seq(self) -> int:
        return self.disk.synced[-1].seq if self.disk.synced else self._checkpoint_seq()

    @property
    def chain_crc(self) -> int:
        return self.last_seq  # no bytes to chain in memory; the seq stands in for it

    def _checkpoint_seq(self) -> int:
        return self.disk.checkpoint[1] if self.disk.checkpoint is not None else 0

    def append(self, items: Sequence[tuple[Event, int | None]], *, ts_ns: int) -> list[Envelope]:
        if self.disk.full:
            raise LogDiskFull("no space left on device (simulated)", errno=28)
        first = self.last_seq + 1
        envelopes = [
            Envelope(seq=first + i, ts_ns=ts_ns, schema_v=SCHEMA_VERSION, event=e, decisions=d)
            for i, (e, d) in enumerate(items)
        ]
        self.disk.unsynced.extend(envelopes)  # write(): the page cache
        if self.disk.tear_next_append:
            self.disk.tear_next_append = False  # one power loss per arming
            # Power lost before the fsync finished: some prefix of the batch reached the disk.
            kept = self.disk.rng.randint(0, len(envelopes))
            self.disk.synced.extend(self.disk.unsynced[:kept])
            self.disk.crash()
            raise SimCrash(f"crash during the append of seq {first}..{envelopes[-1].seq}")
        self.disk.synced.extend(self.disk.unsynced)  # fsync()
        self.disk.unsynced.clear()
        return envelopes


class InvariantCheck:
    """`check_invariants`, skipped for the very state object it last passed: states are
    immutable and the check is pure, and the same state is often checked twice (at a
    checkpoint, then after the step)."""

    def __init__(self) -> None:
        self.sound: State | None = None

    def __call__(self, state: State) -> None:
        if state is self.sound:
            return
        check_invariants(state)
        self.sound = state  # a reference, so the identity cannot be reused by another object


class SimStorage:
    """`LogStorage` on a `SimDisk`: recovery folds the synced records after the checkpoint."""

    def __init__(self, disk: SimDisk, check: Callable[[State], None] = check_invariants) -> None:
        self.disk = disk
        self.check = check

    def open(self) -> OpenedLog:
        disk = self.disk
        disk.crash()
        state, seq, removals = disk.checkpoint or (State(), 0, NO_REMOVALS)
        tail = [e for e in disk.synced if e.seq > seq]
        transactions, incomplete = _transactions(tail)
        if incomplete:  # a torn transaction is cut, as EventLog.open cuts a torn tail
            del disk.synced[len(disk.synced) - len(incomplete) :]
        for group in transactions:
            before = state
            for envelope in group:
                state = apply(state, envelope.event)
            removals = fold_removals(removals, before, [e.event for e in group], state)
            seq = group[-1].seq
        recovered = Recovered(
            state=state,
            removals=removals,
            last_seq=seq,
            chain_crc=seq,
            checkpoint_seq=disk.checkpoint[1] if disk.checkpoint is not None else None,
            decoded_events=len(tail),
            warnings=[],
        )
        return OpenedLog(SimLog(disk), recovered, None)

    def write_checkpoint(
        self, state: State, seq: int, chain_crc: int, removals: PendingRemovals
    ) -> None:
        self.check(state)
        self.disk.checkpoint = (state, seq, removals)  # written and renamed atomically

    def close(self) -> None:
        pass


def _transactions(tail: list[Envelope]) -> tuple[list[list[Envelope]], list[Envelope]]:
    groups: list[list[Envelope]] = []
    group: list[Envelope] = []
    owed = 0
    for envelope in tail:
        group.append(envelope)
        if owed:
            owed -= 1
        elif envelope.decisions:
            owed = envelope.decisions
        if not owed:
            groups.append(group)
            group = []
    return groups, group


async def run_inline(fn: Callable[[], _T], *, limiter: trio.CapacityLimiter | None = None) -> _T:
    """The simulation's `RunIO`: no thread; a checkpoint first, so it is an await point."""
    await trio.lowlevel.checkpoint()
    return fn()


# --- the cgroup tree ------------------------------------------------------------------------------


class ProtectionCheckingFS(FaultInjectingCgroupFS):
    """After every protection write, no parent may fall further below its children than
    `baseline` allows (what drift made it; memory-qos.md §12.3: at every instant)."""

    def __init__(self, inner: SimCgroupFS) -> None:
        super().__init__(inner)
        self.sim = inner
        self.baseline: dict[tuple[str, str], int] = {}
        self.violations: list[str] = []

    def allow_drift(self) -> None:
        """Another writer changed the tree: allow the shortfalls it made from now on (memstate
        learns of drift at its next full resync; a scoped round before it plans with what it
        saw last)."""
        now = protection_shortfalls(tree_snapshot(self.sim), page_size_bytes=PAGE)
        for key, shortfall in now.items():
            self.baseline[key] = max(shortfall, self.baseline.get(key, 0))

    def write(self, path: str, file: str, value: str) -> None:
        super().write(path, file, value)
        if file not in PROTECTION_FILES:
            return
        # A protection write moves two sums only: the written cgroup's own value (it covers its
        # children) and its parent's children's sum. Every other shortfall is what the last
        # check (or `allow_drift`) left, since mkdir adds a child holding 0, rmdir only takes a
        # child's value away and no other file moves a protection; so checking these two
        # parents after every write finds exactly what a walk of the whole tree would.
        now = protection_shortfalls(_neighbourhood(self.sim, path), page_size_bytes=PAGE)
        for key, shortfall in sorted(now.items()):
            if shortfall > self.baseline.get(key, 0):
                self.violations.append(
                    f"after writing {value} to {path}/{file}: {key[0] or '<root>'} {key[1]} "
                    f"is {shortfall} bytes below its children's sum"
                )


def _neighbourhood(fs: SimCgroupFS, path: str) -> ObservedTree:
    """The protections of `path`, its parent, and the children of both, as an ObservedTree in
    which only those two have children (so `protection_shortfalls` checks just them)."""
    parent = path.rpartition("/")[0] if path else None
    holders = [path] if parent is None else [parent, path]
    cgroups: dict[str, ObservedCgroup] = {}

    def observe(cgroup: str, children: tuple[str, ...]) -> None:
        values: dict[str, str] = {}
        for file in PROTECTION_FILES:
            try:
                values[file] = fs.read(cgroup, file)
            except HostError as exc:
                if exc.errno != errno.ENOENT:
                    raise
        cgroups[cgroup] = ObservedCgroup(files=values, children=children)

    for holder in holders:
        names = tuple(fs.list_children(holder))
        observe(holder, names)
        for name in names:
            child = f"{holder}/{name}" if holder else name
            if child not in holders:
                observe(child, ())
    return ObservedTree(cgroups=cgroups)


# --- pods -----------------------------------------------------------------------------------------


def _random_pod(rng: random.Random, uid: str) -> ObservedPod:
    qos = rng.choice(["guaranteed", "guaranteed", "burstable", "besteffort"])
    memory = rng.choice([256, 512, 1024, 2048, 3072]) * Mi
    if qos == "guaranteed":
        cpu = rng.choice(["1", "2", "500m"])
        resources: dict[str, Any] = {
            "requests": {"memory": memory, "cpu": cpu},
            "limits": {"memory": memory, "cpu": cpu},
        }
    elif qos == "burstable":
        resources = {"requests": {"memory": memory // 2}, "limits": {"memory": memory}}
    else:
        resources = {}
    containers = [{"name": "app", "image": "sim", "resources": resources}]
    document = manifest(uid, containers)
    return ObservedPod(locator=f"sim:{uid}", pod=pod_from_manifest(document), spec_hash=uid)


CONFIG_YAML = """\
memoryManagerPolicy: Static
topologyManagerPolicy: none
memoryReservationPolicy: TieredReservation
systemReserved: {memory: 2Gi}
evictionHard: {memory.available: "0"}
reservedMemory:
- {numaNode: 0, limits: {memory: 1Gi}}
- {numaNode: 1, limits: {memory: 1Gi}}
memstate: {metricsAddress: "off", cgroupTree: /, rescanSeconds: 5, resyncSeconds: 20}
"""


# --- the simulation -------------------------------------------------------------------------------


@dataclass
class World:
    """Everything that outlives one life of the daemon."""

    seed: int
    rng: random.Random
    disk: SimDisk
    fs: ProtectionCheckingFS
    pods: dict[str, ObservedPod] = field(default_factory=dict)
    acknowledged: dict[str, PodAllocation] = field(default_factory=dict)
    next_uid: int = 0
    wall_ns: int = 1_700_000_000 * 10**9
    steps: list[str] = field(default_factory=list)
    check_state: InvariantCheck = field(default_factory=InvariantCheck)

    def read_pods(self) -> list[ObservedPod]:
        pods = list(self.pods.values())
        self.rng.shuffle(pods)  # readmission (and every rescan) in a different order
        return pods

    def wall_clock_ns(self) -> int:
        return self.wall_ns + int(trio.current_time() * 1e9)

    def fail(self, message: str) -> SimFailure:
        recent = "; ".join(self.steps[-8:])
        return SimFailure(self.seed, f"{message}\n  last steps: {recent}")


@contextmanager
def _seeded_scheduler(seed: int) -> Iterator[None]:
    # trio shuffles each batch of runnable tasks with a module-level Random: seed it so a seed
    # replays exactly (test-only use of a private name).
    from trio._core import _run

    state = _run._r.getstate()
    _run._r.seed(seed)
    try:
        yield
    finally:
        _run._r.setstate(state)


def simulate(seed: int, config_file: Path, *, lives: int | None = None) -> World:
    """Run the simulation of `seed`; raises SimFailure. See the module docstring."""
    rng = random.Random(seed)
    world = World(
        seed=seed,
        rng=rng,
        disk=SimDisk(random.Random(rng.random())),
        fs=ProtectionCheckingFS(SimCgroupFS(page_size_bytes=PAGE, online_nodes="0-1")),
    )
    clock = trio.testing.MockClock(autojump_threshold=0)
    with _seeded_scheduler(seed):
        try:
            trio.run(_simulate, world, config_file, lives or rng.randint(2, 3), clock=clock)
        except BaseException as exc:
            leaf = _first_leaf(exc)
            if isinstance(leaf, SimFailure):
                raise leaf from None
            if not isinstance(leaf, Exception):
                raise
            raise world.fail(f"the daemon failed: {type(leaf).__name__}: {leaf}") from exc
    return world


def _first_leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


async def _simulate(world: World, config_file: Path, lives: int) -> None:
    for life in range(lives):
        last = life == lives - 1
        await _live(world, config_file, life, last=last)


def fixed_world() -> World:
    """A world with fixed seeds and the plain kernel model, for tests that drive the daemon
    step by step rather than at random."""
    return World(
        seed=1,
        rng=random.Random(1),
        disk=SimDisk(random.Random(2)),
        fs=SimCgroupFS(page_size_bytes=PAGE, online_nodes="0-1"),
    )


def guaranteed_observation(uid: str) -> ObservedPod:
    """A Guaranteed pod of 256 MiB and one CPU, as a pod source observes it."""
    amounts = {"memory": 256 * 1024 * 1024, "cpu": "1"}
    resources = {"requests": amounts, "limits": amounts}
    document = manifest(uid, [{"name": "app", "image": "sim", "resources": resources}])
    return ObservedPod(locator=f"sim:{uid}", pod=pod_from_manifest(document), spec_hash=uid)


def _settings(config_file: Path) -> Settings:
    return Settings(
        state_dir=Path("/nonexistent/sim-state"),
        manifest_dir=Path("/nonexistent/sim-manifests"),
        config_file=config_file,
        metrics_address="off",
        pod_sources=("manifests",),
        checkpoint_every=7,
    )


def handed_name(fn: Callable[..., Any]) -> str:
    """The qualified name of what a `run_io` was handed (a `functools.partial` unwrapped):
    ``Reconciler.reconcile``, ``World.read_pods``..."""
    inner = fn.func if isinstance(fn, functools.partial) else fn
    return str(getattr(inner, "__qualname__", repr(inner)))


def _stay_on_the_cpu() -> None:
    """The simulation's `yield_cpu`: one thread under a MockClock, nothing to give the CPU to."""


def sim_adapters(
    world: World,
    *,
    run_io: Any = run_inline,
    life: int = 0,
    inline_rounds: bool = True,
    yield_cpu: Callable[[], None] = _stay_on_the_cpu,
) -> Adapters:
    """The simulated node's adapters: the world's disk, cgroup tree, clock and manifests, a
    two-NUMA-node topology, no host loops; `run_io` replaces the inline I/O runner
    (`inline_rounds=False` sends every reconcile round through it, for a test that holds them
    there); `yield_cpu` is called where the daemon gives the CPU up (a no-op by default)."""
    return Adapters(
        wall_clock_ns=world.wall_clock_ns,
        run_io=run_io,
        inline_rounds=inline_rounds,
        yield_cpu=yield_cpu,
        storage=lambda: SimStorage(world.disk, world.check_state),
        cgroup_fs=world.fs,
        topology=topology("8Gi", "8Gi", hugepages={"2Mi": 64}),
        sources=[],
        read_manifests=world.read_pods,
        notifier=Notifier(None, None),
        host_loops=False,
        boot_id=lambda: f"sim-boot-{life}",
    )


async def _live(world: World, config_file: Path, life: int, *, last: bool) -> None:
    rng = world.rng
    daemon = Daemon(_settings(config_file), adapters=sim_adapters(world, life=life))
    ending = "clean" if last else rng.choice(["clean", "crash", "crash", "torn"])
    world.steps.append(f"life {life} ({ending})")
    crashed = False
    async with trio.open_nursery() as nursery:

        async def run() -> None:
            nonlocal crashed
            try:
                await daemon.run()
            except SimCrash:
                crashed = True
            except BaseExceptionGroup as group:
                matched, rest = group.split(SimCrash)
                crashed = matched is not None
                if rest is not None:
                    raise rest from None
            nursery.cancel_scope.cancel()

        scope = trio.CancelScope()

        async def run_scoped() -> None:
            with scope:
                await run()

        nursery.start_soon(run_scoped)
        if ending == "crash" and rng.random() < 0.3:
            # A crash during start-up, at a random await point.
            await trio.sleep(rng.uniform(0.0, 0.01))
            scope.cancel()
            world.disk.crash()
            return
        await daemon.ready.wait()
        _check(world, daemon, after_restart=True)
        for _ in range(rng.randint(2, 6) if not last else rng.randint(1, 3)):
            await _step(world, daemon)
            if crashed:
                return
            _check(world, daemon, after_restart=False)
        if ending == "torn":
            world.disk.tear_next_append = True
            _add_pod(world)
            daemon._manifest_wake.set()
            try:
                await trio.sleep(30)
            finally:
                world.disk.tear_next_append = False
            scope.cancel()
            return
        if ending == "crash":
            await trio.sleep(rng.uniform(0.0, 0.5))
            scope.cancel()
            world.disk.crash()
            return
        if last:
            await _converge(world, daemon)
        scope.cancel()
    # (A crash cancels this nursery too: the body may end early, and the code lands here.)
    if ending != "clean":
        world.disk.crash()
        return
    if crashed:
        raise world.fail("the daemon crashed in a life meant to end cleanly")
    await daemon.shutdown()


def _add_pod(world: World) -> None:
    world.next_uid += 1
    uid = f"s{world.seed}-p{world.next_uid}"
    world.pods[uid] = _random_pod(world.rng, uid)


async def _step(world: World, daemon: Daemon) -> None:
    rng = world.rng
    what = rng.choices(
        ["add", "remove", "disk_full", "fault", "drift", "jump", "wait"],
        weights=[5, 3, 1, 2, 2, 1, 1],
    )[0]
    if what == "add" or (what == "remove" and not world.pods):
        for _ in range(rng.randint(1, 3)):
            _add_pod(world)
        what = "add"
    elif what == "remove":
        uid = rng.choice(sorted(world.pods))
        del world.pods[uid]
        world.acknowledged.pop(uid, None)
        what = f"remove {uid}"
    elif what == "disk_full":
        world.disk.full = True
        _add_pod(world)
        daemon._manifest_wake.set()
        try:
            await trio.sleep(rng.uniform(0.0, 3.0))
        finally:
            world.disk.full = False
    elif what == "fault":
        path = rng.choice(["*", "kubepods*", "*pod*"])
        world.fs.inject(
            rng.choice([5, 16, 4]),
            op=rng.choice([None, "write", "mkdir", "read"]),
            path=path,
            times=rng.randint(1, 4),
        )
    elif what == "drift":
        targets = daemon.targets
        candidates = [
            (t.path, file)
            for t in (targets.cgroups if targets is not None else ())
            for file in t.files
            if file in ("memory.min", "memory.low", "memory.max", "memory.high")
            and world.fs.sim.exists(t.path)
        ]
        if candidates:
            path, file = rng.choice(sorted(candidates))
            world.fs.sim.write(path, file, str(rng.choice([0, 64 * Mi, Gi])))
            world.fs.allow_drift()
            what = f"drift {path}/{file}"
    elif what == "jump":
        jump = rng.choice([1.0, 60.0, 3600.0])
        clock = trio.lowlevel.current_clock()
        if isinstance(clock, trio.testing.MockClock):
            clock.jump(jump)
        what = f"jump {jump:g}s"
    world.steps.append(what)
    daemon._manifest_wake.set()
    await trio.sleep(rng.uniform(0.0, 4.0))


def _check(world: World, daemon: Daemon, *, after_restart: bool) -> None:
    state = daemon.state
    try:
        world.check_state(state)
    except InvariantViolation as exc:
        raise world.fail(f"state invariant: {exc}") from None
    if world.fs.violations:
        raise world.fail(f"parent below its children: {world.fs.violations[0]}")
    for uid, allocation in world.acknowledged.items():
        record = state.pods.get(uid)
        if uid in world.pods and (record is None or record.allocation != allocation):
            raise world.fail(
                f"acknowledged pod {uid} lost its allocation"
                + (" across a restart" if after_restart else "")
            )
    for uid, record in state.pods.items():
        if uid in world.pods:
            world.acknowledged.setdefault(uid, record.allocation)


async def _converge(world: World, daemon: Daemon) -> None:
    """Faults stop: a few full resyncs later the tree must match the targets exactly."""
    world.fs.clear()
    world.disk.full = False
    daemon._manifest_wake.set()
    await trio.sleep(10)
    for _ in range(2):  # one round may leave retries (back-off) or removals to the next
        daemon._scope = None
        daemon._reconcile_wake.set()
        await trio.sleep(10)
    targets = daemon.targets
    if targets is None:
        raise world.fail("no targets after start-up")
    tree, errors, _ = observe_tree(world.fs.sim, targets)
    rows = diff_tree(
        targets, tree, page_size_bytes=PAGE, retired_paths=sorted(daemon.removals.paths)
    )
    pending = [f"{r.path}/{r.file}: {r.status}" for r in rows if r.status != "equal"]
    if pending or errors:
        raise world.fail(f"the tree did not converge: {(pending or list(errors))[:5]}")
    _check(world, daemon, after_restart=False)
