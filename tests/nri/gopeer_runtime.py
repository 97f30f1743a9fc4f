"""Driving the Go runtime peer (tests/nri/gopeer/main.go) from a test: build it offline from
Debian's golang-go and golang-github-containerd-ttrpc-dev (GOPATH mode, no module proxy), start
it on a socket, send it JSON commands and read its JSON events (the protocol is described at the
top of main.go). NRI payloads are built and checked by tests.nri.wire.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio

from tests.nri import wire

GO_SOURCE = Path(__file__).parent / "gopeer" / "main.go"
GOCODE = Path("/usr/share/gocode")
TTRPC_SOURCE = GOCODE / "src/github.com/containerd/ttrpc"
WAIT = 60.0  # generous: the machine may be loaded


def build_go_peer(directory: Path) -> Path:
    """Build the peer into `directory`; skip the calling test when the Go toolchain or the ttrpc
    sources are missing (`.ci/run` installs them, so CI never skips)."""
    go = shutil.which("go")
    if go is None or not TTRPC_SOURCE.is_dir():
        pytest.skip(
            "needs golang-go and golang-github-containerd-ttrpc-dev (Debian; .ci/run installs them)"
        )
    binary = directory / "nri-gopeer"
    env = {
        **os.environ,
        "GO111MODULE": "off",  # GOPATH mode: packages from /usr/share/gocode, no module proxy
        "GOPATH": str(GOCODE),
        "GOFLAGS": "",
        "GOPROXY": "off",
        "GOCACHE": str(directory / "cache"),
    }
    subprocess.run(
        [go, "build", "-o", str(binary), str(GO_SOURCE)], check=True, env=env, timeout=600
    )
    return binary


@dataclass
class GoRuntime:
    """The Go peer process playing the runtime, and its event lines."""

    process: trio.Process
    lines: trio.MemoryReceiveChannel[dict[str, object]]
    registrations: list[bytes] = field(default_factory=list)
    next_id: int = 1

    @classmethod
    async def start(cls, binary: Path, socket_path: str, nursery: trio.Nursery) -> GoRuntime:
        """Start the peer owning `socket_path`; return once it listens."""
        process = await trio.lowlevel.open_process(
            [str(binary), "-socket", socket_path], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        send, receive = trio.open_memory_channel[dict[str, object]](1000)
        nursery.start_soon(_read_lines, process, send)
        runtime = cls(process, receive)
        await runtime.event("listening")
        return runtime

    async def command(self, **command: object) -> None:
        assert self.process.stdin is not None
        await self.process.stdin.send_all(json.dumps(command).encode() + b"\n")

    async def event(self, name: str) -> dict[str, object]:
        """The next event `name`, skipping unrelated events."""
        with trio.fail_after(WAIT):
            async for line in self.lines:
                if line.get("event") == name:
                    return line
        raise AssertionError(f"peer exited before {name}")

    async def call(self, method: str, payload: bytes) -> wire.Reply:
        """One unary call of the plugin's service through the real ttrpc client."""
        call_id = self.next_id
        self.next_id += 1
        await self.command(op="call", id=call_id, method=method, payload=payload.hex())
        with trio.fail_after(WAIT):
            async for line in self.lines:
                if line.get("op") == "result" and line.get("id") == call_id:
                    code, message, data = line["code"], line["message"], line.get("payload", "")
                    assert isinstance(code, int) and isinstance(message, str)
                    assert isinstance(data, str)
                    return wire.Reply(code, message, bytes.fromhex(data))
                if line.get("event") == "RegisterPlugin":
                    self.registrations.append(bytes.fromhex(str(line["payload"])))
        raise AssertionError(f"peer exited during {method}")

    async def connected(self) -> None:
        """Wait for a plugin to connect and register (events in either order)."""
        seen: set[str] = set()
        with trio.fail_after(WAIT):
            async for line in self.lines:
                event = str(line.get("event", ""))
                if event == "RegisterPlugin":
                    self.registrations.append(bytes.fromhex(str(line["payload"])))
                seen.add(event)
                if {"connected", "RegisterPlugin"} <= seen:
                    return
        raise AssertionError("peer exited before a plugin registered")

    def registered_as(self, index: int) -> tuple[str, str]:
        """(name, index) of the `index`-th RegisterPlugin seen."""
        fields = wire.decode(self.registrations[index])
        name, idx = wire.one(fields, 1), wire.one(fields, 2)
        assert isinstance(name, bytes) and isinstance(idx, bytes)
        return name.decode(), idx.decode()

    async def stop(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()


async def _read_lines(
    process: trio.Process, send: trio.MemorySendChannel[dict[str, object]]
) -> None:
    assert process.stdout is not None
    buffer = b""
    async with send:
        async for chunk in process.stdout:
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                await send.send(json.loads(line))
