"""The guard and the tool sync against the real toolgate server (see conftest.py)."""

from __future__ import annotations

import logging
import queue
import socket
from concurrent.futures import Future, ThreadPoolExecutor

import grpc
import pytest

import toolgate_guard
from toolgate.v1 import toolgate_pb2 as pb
from toolgate_guard import ApprovalTimeout, Guard, ToolDenied, ToolgateError, ToolSync

ADD = {"user": "bob", "group": "Helpdesk"}


class FakeTool:
    """Stands in for the real tool: records every run."""

    def __init__(self):
        self.runs: list[dict] = []

    def __call__(self, arguments: dict) -> str:
        self.runs.append(arguments)
        return f"ran with {arguments}"


class Pending:
    """on_pending callback that hands the approval over to the test."""

    def __init__(self):
        self.approvals: queue.Queue[pb.Approval] = queue.Queue()

    def __call__(self, approval: pb.Approval) -> None:
        self.approvals.put(approval)

    def next(self) -> pb.Approval:
        return self.approvals.get(timeout=10)


@pytest.fixture
def pool():
    with ThreadPoolExecutor(max_workers=2) as p:
        yield p


def guard(env, **kw) -> Guard:
    return Guard(env.channel, env.agent_key, **kw)


def in_background(pool, fn, *args, **kw) -> Future:
    return pool.submit(fn, *args, **kw)


def test_auto_tool_runs_once(env):
    tool = FakeTool()
    result = guard(env).call("entra", "get_user", {"user": "bob"}, "alice", tool)
    assert tool.runs == [{"user": "bob"}]
    assert result == "ran with {'user': 'bob'}"


def test_approval_needed_tool_runs_once_after_technician_approves(env, pool):
    tool, pending = FakeTool(), Pending()
    call = in_background(
        pool,
        guard(env).call,
        "entra",
        "add_user_to_group",
        ADD,
        "alice",
        tool,
        on_pending=pending,
        timeout=30,
    )
    approval = pending.next()
    assert approval.state == pb.APPROVAL_STATE_PENDING
    assert approval.arguments_json == '{"group":"Helpdesk","user":"bob"}'
    assert not call.done() and tool.runs == []

    env.approve(approval.id)
    call.result(timeout=30)
    assert tool.runs == [ADD]
    assert env.approval(approval.id).state == pb.APPROVAL_STATE_CONSUMED


def test_denied_approval_raises_and_the_tool_never_runs(env, pool):
    tool, pending = FakeTool(), Pending()
    call = in_background(
        pool,
        guard(env).call,
        "entra",
        "reset_password",
        {"user": "bob"},
        "alice",
        tool,
        on_pending=pending,
        timeout=30,
    )
    env.approve(pending.next().id, yes=False)
    with pytest.raises(ToolDenied) as denied:
        call.result(timeout=30)
    assert denied.value.code == "APPROVAL_DENIED"
    assert denied.value.reason == "an approver said no"
    assert tool.runs == []


def test_deadline_raises_timeout_and_a_retry_with_the_same_request_id_resumes(env, pool):
    tool, pending = FakeTool(), Pending()
    g = guard(env)
    with pytest.raises(ApprovalTimeout) as timed_out:
        g.call(
            "entra",
            "add_user_to_group",
            ADD,
            "alice",
            tool,
            request_id="req-timeout",
            timeout=0.5,
            on_pending=pending,
        )
    approval = pending.next()
    assert timed_out.value.approval_id == approval.id
    assert tool.runs == []
    # Giving up does not withdraw the request: it stays pending until it expires.
    assert env.approval(approval.id).state == pb.APPROVAL_STATE_PENDING

    # The same call again, same request_id: the same approval, no second request.
    call = in_background(
        pool,
        g.call,
        "entra",
        "add_user_to_group",
        ADD,
        "alice",
        tool,
        request_id="req-timeout",
        on_pending=pending,
        timeout=30,
    )
    assert pending.next().id == approval.id
    env.approve(approval.id)
    call.result(timeout=30)
    assert tool.runs == [ADD]


def test_changed_arguments_under_the_same_request_id_are_refused(env, pool):
    tool, pending = FakeTool(), Pending()
    g = guard(env)
    with pytest.raises(ApprovalTimeout):
        g.call(
            "entra",
            "add_user_to_group",
            ADD,
            "alice",
            tool,
            request_id="req-1",
            timeout=0.2,
            on_pending=pending,
        )
    env.approve(pending.next().id)
    with pytest.raises(ToolDenied) as denied:
        g.call(
            "entra",
            "add_user_to_group",
            {"user": "bob", "group": "Domain Admins"},
            "alice",
            tool,
            request_id="req-1",
        )
    assert denied.value.code == "APPROVAL_MISMATCH"
    assert tool.runs == []


def test_a_consumed_approval_gives_one_allow_ever(env, pool):
    tool, pending = FakeTool(), Pending()
    g = guard(env)
    call = in_background(
        pool,
        g.call,
        "entra",
        "add_user_to_group",
        ADD,
        "alice",
        tool,
        request_id="req-once",
        on_pending=pending,
        timeout=30,
    )
    approval = pending.next()
    env.approve(approval.id)
    call.result(timeout=30)
    # Another request presenting the same approval is refused ...
    other = env.stub.Decide(
        pb.DecideRequest(
            integration_id="entra",
            tool_name="add_user_to_group",
            arguments_json='{"user":"bob","group":"Helpdesk"}',
            requester_id="alice",
            request_id="req-other",
            approval_id=approval.id,
        ),
        metadata=env.as_agent(),
        timeout=10,
    )
    assert toolgate_guard.decision_code(other.code) == "APPROVAL_CONSUMED"
    # ... and so is a retry of the consuming request: one approval, one ALLOW, ever. The
    # reason says it was this request that had it (see docs/integrating.md).
    with pytest.raises(ToolDenied) as again:
        g.call("entra", "add_user_to_group", ADD, "alice", tool, request_id="req-once")
    assert again.value.code == "APPROVAL_CONSUMED"
    assert "by this request_id" in again.value.reason
    assert len(tool.runs) == 1


def test_expired_approval_raises(env_factory, pool):
    env = env_factory("--approval-ttl", "1s", "--expiry-sweep", "100ms")
    tool, pending = FakeTool(), Pending()
    with pytest.raises(ToolDenied) as denied:
        guard(env).call(
            "entra", "add_user_to_group", ADD, "alice", tool, on_pending=pending, timeout=30
        )
    assert denied.value.code == "APPROVAL_EXPIRED"
    assert denied.value.approval_id == pending.next().id
    assert tool.runs == []


def test_disabled_and_unknown_tools_raise_with_their_code(env):
    tool = FakeTool()
    g = guard(env)
    revision = env.set_policy("get_user", pb.POLICY_DISABLED)
    with pytest.raises(ToolDenied) as disabled:
        g.call("entra", "get_user", {"user": "bob"}, "alice", tool, min_revision=revision)
    assert disabled.value.code == "TOOL_DISABLED"
    with pytest.raises(ToolDenied) as unknown:
        g.call("entra", "drop_tenant", {}, "alice", tool)
    assert unknown.value.code == "UNKNOWN_TOOL"
    assert tool.runs == []


def test_min_revision_ahead_of_the_server_is_unavailable_not_an_old_answer(env_factory):
    env = env_factory("--min-revision-wait", "100ms")
    tool = FakeTool()
    with pytest.raises(ToolgateError) as error:
        guard(env).call("entra", "get_user", {"user": "bob"}, "alice", tool, min_revision=99)
    assert error.value.code == "UNAVAILABLE"
    assert tool.runs == []


def test_server_down_raises_and_the_tool_never_runs(env):
    tool = FakeTool()
    env.server.stop()
    with pytest.raises(ToolgateError) as error:
        guard(env).call("entra", "get_user", {"user": "bob"}, "alice", tool)
    assert error.value.code == "UNAVAILABLE"
    assert error.value.status == grpc.StatusCode.UNAVAILABLE

    # Nothing listening at all (a wrong address): the same.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        nowhere = f"127.0.0.1:{s.getsockname()[1]}"
    with toolgate_guard.connect(nowhere) as channel:
        with pytest.raises(ToolgateError) as error:
            Guard(channel, env.agent_key).call("entra", "get_user", {}, "alice", tool)
    assert error.value.code == "UNAVAILABLE"
    assert tool.runs == []


def test_waiting_survives_a_server_restart(env, pool, caplog):
    caplog.set_level(logging.INFO, logger="toolgate_guard")
    tool, pending = FakeTool(), Pending()
    call = in_background(
        pool,
        guard(env).call,
        "entra",
        "add_user_to_group",
        ADD,
        "alice",
        tool,
        on_pending=pending,
        timeout=60,
    )
    approval = pending.next()
    env.server.wait_for_metric('toolgate_watch_streams{watch="approvals"}', 1)
    env.server.restart()  # the watch ends with UNAVAILABLE; the guard reconnects
    env.server.wait_for_metric('toolgate_watch_streams{watch="approvals"}', 1, timeout=30)
    assert not call.done()
    env.approve(approval.id)
    call.result(timeout=60)
    assert tool.runs == [ADD]
    assert any("reconnecting" in r.getMessage() for r in caplog.records)


class RecordingSync(ToolSync):
    """A ToolSync that also records what kind of event each one was."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.events: list[str] = []

    def _apply(self, event):
        kind = event.WhichOneof("event")
        if kind == "snapshot" and event.snapshot.reset:
            kind = "reset"
        self.events.append(kind)
        super()._apply(event)


def names(sync: ToolSync) -> set[str]:
    return {t.name for t in sync.tools()}


def test_tool_sync_follows_saves(env):
    changes = []
    sync = RecordingSync(
        env.channel, env.agent_key, on_change=lambda tools, revision: changes.append(revision)
    ).start()
    try:
        assert sync.wait_until(lambda s: "get_user" in names(s), timeout=10)
        assert len(sync.tools()) == 11
        assert sync.events == ["snapshot"]
        # The agent's view: no admin-only fields.
        assert sync.get("entra", "get_user").source == pb.POLICY_SOURCE_UNSPECIFIED

        revision = env.set_policy("get_user", pb.POLICY_DISABLED)
        assert sync.wait_until(lambda s: s.revision == revision, timeout=10)
        assert "get_user" not in names(sync)
        assert changes[-1] == revision

        revision = env.set_policy("get_user", pb.POLICY_AUTO)
        assert sync.wait_until(lambda s: s.revision == revision, timeout=10)
        assert sync.get("entra", "get_user").policy == pb.POLICY_AUTO
        assert sync.events == ["snapshot", "change", "change"]
    finally:
        sync.stop()


def test_tool_sync_resumes_after_a_server_restart(env):
    sync = RecordingSync(env.channel, env.agent_key).start()
    try:
        assert sync.wait_until(lambda s: s.revision is not None, timeout=10)
        env.server.restart()
        # A Save on the new process reaches the sync once it has reconnected.
        revision = env.set_policy("list_group_members", pb.POLICY_DISABLED)
        assert sync.wait_until(lambda s: s.revision == revision, timeout=30)
        assert "list_group_members" not in names(sync)
        # It resumed with since_revision: no second snapshot.
        assert sync.events == ["snapshot", "change"]
    finally:
        sync.stop()


def test_tool_sync_too_far_behind_gets_a_reset_snapshot_that_replaces_everything(env_factory):
    env = env_factory("--watch-history", "1")
    sync = RecordingSync(env.channel, env.agent_key).start()
    assert sync.wait_until(lambda s: "get_user" in names(s), timeout=10)
    sync.stop()
    # Two Saves while the sync is away: more than watch_history can replay.
    env.set_policy("get_user", pb.POLICY_DISABLED)
    revision = env.set_policy("getSignInLogs", pb.POLICY_APPROVAL_NEEDED)
    sync.start()
    try:
        assert sync.wait_until(lambda s: s.revision == revision, timeout=10)
        assert sync.events == ["snapshot", "reset"]
        assert "get_user" not in names(sync)
        assert sync.get("entra", "getSignInLogs").policy == pb.POLICY_APPROVAL_NEEDED
    finally:
        sync.stop()


def test_tool_sync_with_a_revoked_or_wrong_key_stops_with_an_error(env):
    sync = ToolSync(env.channel, "tg_not_a_key").start()
    try:
        assert not sync.wait_until(lambda s: s.revision is not None, timeout=10)
        assert sync.error is not None and sync.error.code == "UNAUTHENTICATED"
    finally:
        sync.stop()


def test_an_mcp_tools_list_connects_with_its_annotations_and_reaches_the_sync(env):
    # What an MCP server's tools/list answers (one page here).
    mcp_tools = [
        {
            "name": "read_file",
            "description": "Read a file",
            "inputSchema": {"type": "object", "properties": {"path": {"type": "string"}}},
            "annotations": {"readOnlyHint": True, "openWorldHint": False},
        },
        {
            "name": "delete_file",
            "inputSchema": {"type": "object"},
            "annotations": {"destructiveHint": True, "idempotentHint": True},
        },
        {"name": "list_directory", "inputSchema": {"type": "object"}},
    ]
    sync = RecordingSync(env.channel, env.agent_key, integration_id="files").start()
    try:
        assert sync.wait_until(lambda s: s.revision is not None, timeout=10)
        connected = env.stub.ConnectIntegration(
            toolgate_guard.mcp_connect_request("files", mcp_tools, display_name="Files"),
            metadata=env.as_admin(),
            timeout=10,
        )
        seeded = {t.name: (t.policy, t.source) for t in connected.tools}
        assert seeded == {
            "read_file": (pb.POLICY_AUTO, pb.POLICY_SOURCE_ANNOTATION),
            "delete_file": (pb.POLICY_APPROVAL_NEEDED, pb.POLICY_SOURCE_ANNOTATION),
            "list_directory": (pb.POLICY_AUTO, pb.POLICY_SOURCE_VERB),
        }
        # The agent's list changes: this is where an MCP server sends tools/list_changed.
        assert sync.wait_until(lambda s: s.revision == connected.revision, timeout=10)
        assert names(sync) == {"read_file", "delete_file", "list_directory"}
        read = sync.get("files", "read_file").annotations
        assert read.read_only_hint is True and read.open_world_hint is False
        assert not read.HasField("destructive_hint")  # not said stays not said
        assert sync.events == ["snapshot", "change"]
    finally:
        sync.stop()

    tool = FakeTool()
    assert guard(env).call("files", "read_file", {"path": "/etc/motd"}, "alice", tool)
    assert tool.runs == [{"path": "/etc/motd"}]
