"""The daemon's HTTP endpoint on port 0: the kernel picks a free port, and the daemon says which
(the journal line at start, `daemon.metrics_address` in daemon-status.json and `memstate
status`, written before READY=1). The test harness relies on it instead of picking a port itself
and releasing it (a race with every other process on the machine).

Method: two real `memstate run` processes with `metricsAddress: 127.0.0.1:0`, each scraped over
HTTP on the port it reports; one restarted, reporting its new port.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from tests.daemon.harness import Node


def test_port_0_is_bound_reported_and_served(make_node: Callable[..., Node]) -> None:
    first, second = make_node(), make_node()
    assert first.config["memstate"]["metricsAddress"] == "127.0.0.1:0"
    first.start(wait_ready=False)
    second.start(wait_ready=False)
    first.wait_ready()
    second.wait_ready()
    ports = {first.metrics_port, second.metrics_port}
    assert len(ports) == 2 and 0 not in ports
    for node in (first, second):
        address = f"127.0.0.1:{node.metrics_port}"
        assert f"metrics on http://{address}/metrics" in node.stderr()
        assert node.http("/readyz")[0] == 200
        assert node.metric("memstate_last_applied_seq") is not None
        table = node.cli("status", "--config", str(node.config_file), "-o", "table")
        assert table.returncode == 0, table.stderr
        assert f"metrics http://{address}/metrics" in table.stdout.splitlines()[0]
        document = json.loads(node.cli("status", "--config", str(node.config_file)).stdout)
        assert document["daemon"]["metrics_address"] == address
    assert first.terminate() == 0
    first.start()
    assert first.metric("memstate_last_applied_seq") is not None  # the new port, read again
    assert f"metrics on http://127.0.0.1:{first.metrics_port}/metrics" in first.stderr()
    assert first.terminate() == 0
    assert second.terminate() == 0
