"""Guard an AI agent's tool calls with toolgate. Copy this file into your agent backend.

    import toolgate_guard

    channel = toolgate_guard.connect("127.0.0.1:50051")
    guard = toolgate_guard.Guard(channel, api_key=AGENT_KEY)

    # Runs add_user_to_group(arguments) only once toolgate answers ALLOW: at once for an
    # `auto` tool, after the approvers said yes for an `approval_needed` one.
    result = guard.call("entra", "add_user_to_group", {"user": "bob", "group": "Helpdesk"},
                        requester_id="alice", run=add_user_to_group)

    # The tools the agent may offer, kept in sync with the admins' Saves.
    tools = toolgate_guard.ToolSync(channel, api_key=AGENT_KEY,
                                    on_change=lambda tools, revision: notify_list_changed())
    tools.start()

Every failure to get an ALLOW raises a GuardError and leaves the tool unrun:

- ToolDenied: toolgate answered DENY; `code` is the DecisionCode without its prefix
  ("TOOL_DISABLED", "UNKNOWN_TOOL", "APPROVAL_DENIED", "APPROVAL_EXPIRED",
  "APPROVAL_CONSUMED", "APPROVAL_MISMATCH", "MANAGER_UNKNOWN") and `reason` the server's
  sentence.
- ApprovalTimeout: nobody decided before the deadline. The approval stays pending on the
  server until it expires; calling again with the same request_id resumes waiting for it.
- ToolgateError: the call to toolgate itself failed (`code` is the gRPC status name, e.g.
  "UNAVAILABLE"). Fail closed: never run the tool because toolgate could not be asked.

Needs grpcio and protobuf, and the stubs that generate_stubs.py makes from toolgate.proto.
See docs/integrating.md for the loop, its failure modes, retries and the MCP mapping.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from typing import Any, Callable, Optional, TypeVar

import grpc

from toolgate.v1 import toolgate_pb2 as pb
from toolgate.v1 import toolgate_pb2_grpc as pb_grpc

log = logging.getLogger("toolgate_guard")

T = TypeVar("T")

# Stream failures after which the guard or the sync reconnects (the server drains on
# shutdown with UNAVAILABLE; a watcher that fell behind gets RESOURCE_EXHAUSTED).
RECONNECT = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.ABORTED,
}


def connect(target: str, credentials: Optional[grpc.ChannelCredentials] = None) -> grpc.Channel:
    """A channel to toolgate that reconnects quickly after a server restart.

    Pass `grpc.ssl_channel_credentials(...)` when the server has `tls_cert`.
    """
    options = [
        ("grpc.initial_reconnect_backoff_ms", 200),
        ("grpc.max_reconnect_backoff_ms", 5000),
        # Notice a dead connection while a watch is idle.
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
    ]
    if credentials is None:
        return grpc.insecure_channel(target, options=options)
    return grpc.secure_channel(target, credentials, options=options)


class GuardError(Exception):
    """The tool did not run. `code` says why, `reason` in words."""

    def __init__(self, code: str, reason: str, approval_id: str = ""):
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason
        self.approval_id = approval_id


class ToolDenied(GuardError):
    """toolgate answered DENY."""


class ApprovalTimeout(GuardError):
    """The approval was still pending at the deadline."""


class ToolgateError(GuardError):
    """The call to toolgate failed; `status` is the gRPC status code."""

    def __init__(self, error: grpc.RpcError, approval_id: str = ""):
        status = error.code() if isinstance(error, grpc.Call) else grpc.StatusCode.UNKNOWN
        details = error.details() if isinstance(error, grpc.Call) else str(error)
        super().__init__(status.name, details or "", approval_id)
        self.status = status


def decision_code(code: int) -> str:
    """DECISION_CODE_APPROVAL_DENIED -> "APPROVAL_DENIED"."""
    return pb.DecisionCode.Name(code).removeprefix("DECISION_CODE_")


class Guard:
    """Asks toolgate before every tool call and runs the tool only on ALLOW.

    `decide_timeout` bounds each Decide call; `approval_timeout` is how long `call` waits
    for people to approve unless the call gives its own `timeout`.
    """

    def __init__(
        self,
        channel: grpc.Channel,
        api_key: str,
        *,
        decide_timeout: float = 5.0,
        approval_timeout: float = 15 * 60.0,
    ):
        self._stub = pb_grpc.PolicyServiceStub(channel)
        self._metadata = (("authorization", f"Bearer {api_key}"),)
        self.decide_timeout = decide_timeout
        self.approval_timeout = approval_timeout

    def call(
        self,
        integration_id: str,
        tool_name: str,
        arguments: dict[str, Any],
        requester_id: str,
        run: Callable[[dict[str, Any]], T],
        *,
        request_id: Optional[str] = None,
        timeout: Optional[float] = None,
        min_revision: Optional[int] = None,
        on_pending: Optional[Callable[[pb.Approval], None]] = None,
    ) -> T:
        """Runs `run(arguments)` once toolgate allows this exact call, and returns its result.

        `request_id` names this call: reuse it when you retry the same call (after a
        timeout, a crash or an UNAVAILABLE) and toolgate finds the approval it already
        asked for instead of asking the approvers again. A new call needs a new id (the
        default is a fresh one). `min_revision` is the revision an admin's Save returned,
        so that a decision never comes from an older configuration. `on_pending` is
        called with the approval whenever Decide answers PENDING_APPROVAL, for example
        to tell the user who has to approve.

        The tool gets the arguments as toolgate saw them (a fresh copy): what was
        approved is what runs.
        """
        arguments_json = json.dumps(arguments, separators=(",", ":"), allow_nan=False)
        deadline = time.monotonic() + (self.approval_timeout if timeout is None else timeout)
        request = pb.DecideRequest(
            integration_id=integration_id,
            tool_name=tool_name,
            arguments_json=arguments_json,
            requester_id=requester_id,
            request_id=request_id or f"req_{uuid.uuid4().hex}",
        )
        if min_revision is not None:
            request.min_revision = min_revision
        answer = self._decide(request)
        while answer.verdict == pb.VERDICT_PENDING_APPROVAL:
            approval = answer.approval
            if on_pending is not None:
                on_pending(approval)
            self._wait_for_decision(approval.id, deadline)
            # Someone decided: ask again with the approval. The server is the judge (it
            # also checks expiry, the policy in force now and that the call is the same).
            request.approval_id = approval.id
            answer = self._decide(request)
        if answer.verdict != pb.VERDICT_ALLOW:
            raise ToolDenied(decision_code(answer.code), answer.reason, answer.approval.id)
        return run(json.loads(arguments_json))

    def _decide(self, request: pb.DecideRequest) -> pb.DecideResponse:
        try:
            return self._stub.Decide(request, metadata=self._metadata, timeout=self.decide_timeout)
        except grpc.RpcError as e:
            raise ToolgateError(e, request.approval_id) from e

    def _wait_for_decision(self, approval_id: str, deadline: float) -> None:
        """Returns once the approval is no longer pending; raises ApprovalTimeout at the
        deadline. Reconnects the watch when it breaks: it starts again with the
        approval's current state, so no decision is missed."""
        backoff = 0.1
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ApprovalTimeout(
                    "APPROVAL_TIMEOUT", "no decision before the deadline", approval_id
                )
            stream = self._stub.WatchApprovals(
                pb.WatchApprovalsRequest(approval_id=approval_id),
                metadata=self._metadata,
                timeout=remaining,
                # While the server is down (restart, failover) wait for it, up to the deadline.
                wait_for_ready=True,
            )
            try:
                for event in stream:
                    backoff = 0.1
                    if event.approval.state != pb.APPROVAL_STATE_PENDING:
                        return
            except grpc.RpcError as e:
                if e.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                    continue  # the loop's check raises ApprovalTimeout
                if e.code() not in RECONNECT:
                    raise ToolgateError(e, approval_id) from e
                log.info("approval watch for %s broke (%s); reconnecting", approval_id, e.code())
            finally:
                stream.cancel()
            # Back off so a server that keeps refusing is not hammered.
            time.sleep(min(backoff, max(0.0, deadline - time.monotonic())))
            backoff = min(backoff * 2, 5.0)


def tool_key(tool: pb.Tool | pb.ToolRef) -> tuple[str, str]:
    name = tool.tool_name if isinstance(tool, pb.ToolRef) else tool.name
    return (tool.integration_id, name)


class ToolSync:
    """Keeps the tools the caller may use in sync with toolgate's WatchConfig stream.

    The first event is a snapshot of every tool; then one change per saved revision. When
    the stream breaks it reconnects with `since_revision` and gets exactly the changes it
    missed, or a snapshot with `reset` that replaces everything when it was too far behind.
    For an agent key a disabled or removed tool arrives as a removal.

    `on_change(tools, revision)` is called (on the sync's thread) after every snapshot and
    change: the place to send MCP's `notifications/tools/list_changed`.
    """

    # Failures that reconnecting will not fix: a bad or revoked key, a wrong role.
    FATAL = {
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.INVALID_ARGUMENT,
    }

    def __init__(
        self,
        channel: grpc.Channel,
        api_key: str,
        *,
        integration_id: str = "",
        on_change: Optional[Callable[[list[pb.Tool], int], None]] = None,
    ):
        self._stub = pb_grpc.PolicyServiceStub(channel)
        self._metadata = (("authorization", f"Bearer {api_key}"),)
        self._integration_id = integration_id
        self._on_change = on_change
        self._cond = threading.Condition()
        self._tools: dict[tuple[str, str], pb.Tool] = {}
        self._stream: Optional[grpc.Call] = None
        self._stopping = threading.Event()
        self._thread: Optional[threading.Thread] = None
        #: The revision the tool list is at; None before the first snapshot.
        self.revision: Optional[int] = None
        #: Set when the sync gave up (a failure that reconnecting cannot fix).
        self.error: Optional[GuardError] = None

    def tools(self) -> list[pb.Tool]:
        """The tools now, sorted by integration and name."""
        with self._cond:
            return [self._tools[k] for k in sorted(self._tools)]

    def get(self, integration_id: str, name: str) -> Optional[pb.Tool]:
        with self._cond:
            return self._tools.get((integration_id, name))

    def start(self) -> "ToolSync":
        """Starts following on a background thread; resumes from `revision` if it has one."""
        if self._thread is not None:
            raise RuntimeError("already started")
        self._stopping.clear()
        self.error = None
        self._thread = threading.Thread(target=self._follow, name="toolgate-sync", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        with self._cond:
            if self._stream is not None:
                self._stream.cancel()
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def wait_until(self, predicate: Callable[["ToolSync"], bool], timeout: float) -> bool:
        """Waits until `predicate(self)` holds (checked after every event); False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self):
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.error is not None:
                    return predicate(self)
                self._cond.wait(remaining)
            return True

    def _follow(self) -> None:
        backoff = 0.1
        while not self._stopping.is_set():
            request = pb.WatchConfigRequest(integration_id=self._integration_id)
            if self.revision is not None:
                request.since_revision = self.revision
            with self._cond:
                if self._stopping.is_set():
                    return
                self._stream = self._stub.WatchConfig(
                    request, metadata=self._metadata, wait_for_ready=True
                )
                stream = self._stream
            try:
                for event in stream:
                    if self._stopping.is_set():
                        return
                    backoff = 0.1
                    self._apply(event)
            except grpc.RpcError as e:
                if self._stopping.is_set():
                    return
                if e.code() in self.FATAL:
                    log.error("tool sync stopped: %s %s", e.code(), e.details())
                    with self._cond:
                        self.error = ToolgateError(e)
                        self._cond.notify_all()
                    return
                log.info(
                    "tool sync broke (%s); resuming after revision %s", e.code(), self.revision
                )
            finally:
                with self._cond:
                    self._stream = None
            self._stopping.wait(backoff)
            backoff = min(backoff * 2, 5.0)

    def _apply(self, event: pb.WatchConfigResponse) -> None:
        kind = event.WhichOneof("event")
        with self._cond:
            if kind == "snapshot":
                # A snapshot (first, or `reset` after falling behind) replaces everything.
                self._tools = {tool_key(t): t for t in event.snapshot.tools}
            elif kind == "change":
                for t in event.change.upserted:
                    self._tools[tool_key(t)] = t
                for ref in event.change.removed:
                    self._tools.pop(tool_key(ref), None)
            self.revision = event.revision
            self._cond.notify_all()
        if kind in ("snapshot", "change") and self._on_change is not None:
            self._on_change(self.tools(), event.revision)


# MCP's tool annotations and the ToolAnnotations fields they carry over to.
MCP_HINTS = {
    "readOnlyHint": "read_only_hint",
    "destructiveHint": "destructive_hint",
    "idempotentHint": "idempotent_hint",
    "openWorldHint": "open_world_hint",
}


def mcp_connect_request(
    integration_id: str,
    mcp_tools: list[dict[str, Any]],
    *,
    kind: str = "mcp",
    display_name: str = "",
) -> pb.ConnectIntegrationRequest:
    """An MCP server's `tools/list` result (every page's `tools`) as a ConnectIntegration.

    Send it with an admin key whenever the MCP server's tool list changes: new tools get a
    seeded policy, known tools keep theirs, and tools missing from the list are removed (so
    gather every page first). Only the hints the server sent are carried over: toolgate
    reads an unset hint as "not said" and seeds from the tool's name instead.
    """
    tools = []
    for tool in mcp_tools:
        given = tool.get("annotations") or {}
        hints = {ours: bool(given[theirs]) for theirs, ours in MCP_HINTS.items() if theirs in given}
        tools.append(
            pb.ToolDefinition(
                name=tool["name"],
                description=tool.get("description", ""),
                input_schema_json=json.dumps(tool["inputSchema"]) if "inputSchema" in tool else "",
                annotations=pb.ToolAnnotations(**hints),
            )
        )
    return pb.ConnectIntegrationRequest(
        integration_id=integration_id, kind=kind, display_name=display_name, tools=tools
    )
