"""Starts the real toolgate binary for the tests: a fresh SQLite database per test, keys for
the three roles, the sample integration connected and the sample directory synced.

TOOLGATE_BIN names the binary (default: target/debug/toolgate of this repository)."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from google.protobuf import json_format

from toolgate.v1 import toolgate_pb2 as pb
from toolgate.v1 import toolgate_pb2_grpc as pb_grpc

REPO = Path(__file__).resolve().parent.parent.parent
EXAMPLES = REPO / "examples"
SERVING = re.compile(r"toolgate serving addr=(\S+)")
METRICS = re.compile(r"metrics serving at /metrics addr=(\S+)")


def binary() -> str:
    path = Path(os.environ.get("TOOLGATE_BIN") or REPO / "target" / "debug" / "toolgate")
    if not path.is_absolute():
        path = REPO / path
    if not os.access(path, os.X_OK):
        pytest.fail(f"no toolgate binary at {path}: build it (cargo build) or set TOOLGATE_BIN")
    return str(path)


class Toolgate:
    """One toolgate server process on 127.0.0.1, restartable on the same port and database."""

    def __init__(self, workdir: Path, *flags: str):
        self.bin = binary()
        self.database_url = f"sqlite://{workdir / 'toolgate.db'}"
        self.flags = list(flags)
        self.address = "127.0.0.1:0"
        self.metrics_address = ""
        self.process: subprocess.Popen[str] | None = None
        self.log: list[str] = []

    def mint(self, role: str) -> str:
        out = subprocess.run(
            [
                self.bin,
                "keys",
                "create",
                "--tenant",
                "acme",
                "--role",
                role,
                "--database-url",
                self.database_url,
            ],
            check=True,
            capture_output=True,
            text=True,
            timeout=30,
        )
        return out.stdout.strip()

    def start(self, timeout: float = 30.0) -> None:
        """Starts the server and returns once it logged its address."""
        self.process = subprocess.Popen(
            [
                self.bin,
                "serve",
                "--listen",
                self.address,
                "--database-url",
                self.database_url,
                "--metrics-listen",
                "127.0.0.1:0",
                "--shutdown-grace",
                "2s",
                *self.flags,
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        lines: queue.Queue[str | None] = queue.Queue()

        def drain(stream):
            for line in stream:
                self.log.append(line)
                lines.put(line)
            lines.put(None)

        threading.Thread(target=drain, args=(self.process.stderr,), daemon=True).start()
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                line = None
            if line is None:
                self.stop()
                raise RuntimeError("toolgate did not start:\n" + "".join(self.log))
            match = METRICS.search(line)
            if match:
                self.metrics_address = match.group(1)
            match = SERVING.search(line)
            if match:
                self.address = match.group(1)  # a restart reuses the port
                return

    def stop(self) -> None:
        """SIGTERM, as an orchestrator would: streams end with UNAVAILABLE, then exit 0."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def metric(self, series: str) -> float:
        """One series of GET /metrics, e.g. 'toolgate_watch_streams{watch="approvals"}'."""
        with urllib.request.urlopen(f"http://{self.metrics_address}/metrics", timeout=10) as r:
            for line in r.read().decode().splitlines():
                name, _, value = line.rpartition(" ")
                if name == series:
                    return float(value)
        raise KeyError(series)

    def wait_for_metric(self, series: str, value: float, timeout: float = 10.0) -> None:
        """Polls the metric until it has the value (observable state, with a deadline)."""
        deadline = time.monotonic() + timeout
        while self.metric(series) != value:
            if time.monotonic() > deadline:
                raise AssertionError(f"{series} is {self.metric(series)}, not {value}")
            time.sleep(0.02)

    def restart(self) -> None:
        self.stop()
        self.start()


class Env:
    """A running server with the sample data, its keys, and clients for the test's side."""

    def __init__(self, server: Toolgate, channel: grpc.Channel):
        self.server = server
        self.channel = channel
        self.admin_key = server.mint("admin")
        self.agent_key = server.mint("agent")
        self.approver_key = server.mint("approver")
        self.stub = pb_grpc.PolicyServiceStub(channel)

    def as_admin(self):
        return (("authorization", f"Bearer {self.admin_key}"),)

    def as_agent(self):
        return (("authorization", f"Bearer {self.agent_key}"),)

    def as_approver(self):
        return (("authorization", f"Bearer {self.approver_key}"),)

    def seed(self) -> None:
        connect = json_format.Parse(
            (EXAMPLES / "entra-connect.json").read_text(), pb.ConnectIntegrationRequest()
        )
        self.stub.ConnectIntegration(connect, metadata=self.as_admin(), timeout=10)
        people = json_format.Parse((EXAMPLES / "people.json").read_text(), pb.UpsertPeopleRequest())
        self.stub.UpsertPeople(people, metadata=self.as_admin(), timeout=10)

    def set_policy(self, tool: str, policy: int) -> int:
        """An admin's Save; returns the new revision."""
        saved = self.stub.SetPolicy(
            pb.SetPolicyRequest(
                changes=[pb.PolicyChange(integration_id="entra", tool_name=tool, policy=policy)]
            ),
            metadata=self.as_admin(),
            timeout=10,
        )
        return saved.revision

    def approve(self, approval_id: str, yes: bool = True) -> pb.Approval:
        """The technician's answer, as the approval bridge would report it."""
        return self.stub.SubmitApproval(
            pb.SubmitApprovalRequest(
                approval_id=approval_id,
                role=pb.APPROVER_ROLE_TECHNICIAN,
                approver_id="tom",
                approve=yes,
                comment="ticket 4711" if yes else "not without a ticket",
            ),
            metadata=self.as_approver(),
            timeout=10,
        ).approval

    def approval(self, approval_id: str) -> pb.Approval:
        return self.stub.GetApproval(
            pb.GetApprovalRequest(approval_id=approval_id), metadata=self.as_admin(), timeout=10
        ).approval


def make_env(tmp_path: Path, *flags: str):
    import toolgate_guard

    server = Toolgate(tmp_path, *flags)
    server.start()
    channel = toolgate_guard.connect(server.address)
    env = Env(server, channel)
    env.seed()
    return env


@pytest.fixture
def env(tmp_path):
    e = make_env(tmp_path)
    yield e
    e.channel.close()
    e.server.stop()


@pytest.fixture
def env_factory(tmp_path):
    """For tests that need server flags of their own."""
    made = []

    def make(*flags: str) -> Env:
        sub = tmp_path / f"server{len(made)}"
        sub.mkdir()
        e = make_env(sub, *flags)
        made.append(e)
        return e

    yield make
    for e in made:
        e.channel.close()
        e.server.stop()
