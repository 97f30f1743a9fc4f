"""Container cgroups the runtime names by id get their values when NRI told memstate the id.

The runtime names a container's cgroup by its id (`<pod cgroup>/<64 hex>` for containerd with
the cgroupfs driver); the reconciler matches such a cgroup to a container through the ids it
knows (docs/reconciler.md "Container cgroups"). The kubelet and API-server sources report ids;
with only the manifest directory as a pod source, the containers NRI told about are the only
ids there are. Method: the real `memstate run` with `nri:` (tests.daemon.harness.Node), the
Python runtime stand-in over a real unix socket creating two containers of the Burstable pod,
and the test playing runc in the directory-backed simulated tree (memory controller enabled in
the pod cgroup, one cgroup per container id, plus one of an id NRI never named).
"""

from __future__ import annotations

from pathlib import Path

import trio

from memstate.host.sim.cgroupdir import DirCgroupFS
from tests.daemon.harness import Mi, Node
from tests.daemon.test_e2e import wait_file
from tests.nri import daemon_node as dn
from tests.nri import wire
from tests.nri.standin import StandInRuntime

WEB_ID = "a1" * 32
LOG_ID = "b2" * 32
STRANGER_ID = "c3" * 32


def test_containers_known_through_nri_get_their_values(node: Node, socket_dir: Path) -> None:
    pod = f"kubepods/burstable/pod{dn.BURSTABLE}"

    async def scenario() -> None:
        runtime = StandInRuntime(str(socket_dir / "nri.sock"))
        await runtime.listen()
        async with trio.open_nursery() as nursery:
            await trio.to_thread.run_sync(node.start)
            await runtime.accept(nursery)
            assert (await runtime.call("Configure", wire.configure_request())).code == 0
            reply = await runtime.call("Synchronize", wire.synchronize_request([], [], False))
            assert reply.code == 0, reply
            await trio.to_thread.run_sync(
                lambda: node.wait_for(lambda _: dn.BURSTABLE in dn.decisions(node)[0])
            )
            sandbox = dn.sandbox(dn.BURSTABLE)
            assert (await runtime.call("RunPodSandbox", wire.pod_request(sandbox))).code == 0
            for container_id, name in ((WEB_ID, "web"), (LOG_ID, "log")):
                request = wire.container_request(
                    sandbox, dn.container(dn.BURSTABLE, container_id, name)
                )
                assert (await runtime.call("CreateContainer", request)).code == 0
            # runc: the container cgroups, named by id, in the pod cgroup.
            await trio.to_thread.run_sync(lambda: wait_file(node, pod, "memory.low", str(320 * Mi)))
            with DirCgroupFS(node.cgroup_dir, watch=False) as fs:
                fs.write(pod, "cgroup.subtree_control", "+memory")
                for container_id in (WEB_ID, LOG_ID, STRANGER_ID):
                    fs.mkdir(f"{pod}/{container_id}")
            # TieredReservation: a Burstable container's memory.low is its request.
            for container_id, request in ((WEB_ID, 256 * Mi), (LOG_ID, 64 * Mi)):
                await trio.to_thread.run_sync(
                    lambda c=container_id, r=request: wait_file(
                        node, f"{pod}/{c}", "memory.low", str(r), timeout=60
                    )
                )
            # An id no one named is no container memstate knows: left alone.
            assert node.cgroup_file(f"{pod}/{STRANGER_ID}", "memory.low") == "0"
            assert node.cgroup_file(f"{pod}/{WEB_ID}", "memory.max") == "max"  # the runtime's
            await trio.to_thread.run_sync(node.terminate)
            nursery.cancel_scope.cancel()

    trio.run(scenario)
