// The guard and the tool sync against the real toolgate server (see server.ts).

import assert from "node:assert/strict";
import { createServer } from "node:net";
import { afterEach, test } from "node:test";
import {
  ApprovalTimeout,
  Guard,
  ToolDenied,
  ToolgateError,
  ToolSync,
  bearer,
  connect,
  decisionCode,
  mcpConnectRequest,
  unary,
  type Approval,
  type Arguments,
  type WatchConfigResponse,
} from "../src/guard.js";
import { Env } from "./server.js";

const ADD = { user: "bob", group: "Helpdesk" };

/** Stands in for the real tool: records every run. */
class FakeTool {
  runs: Arguments[] = [];
  run = (args: Arguments) => {
    this.runs.push(args);
    return `ran with ${JSON.stringify(args)}`;
  };
}

/** onPending callback that hands the approval over to the test. */
class Pending {
  private approvals: Approval[] = [];
  private waiting: ((a: Approval) => void) | undefined;
  callback = (approval: Approval) => {
    if (this.waiting) {
      this.waiting(approval);
      this.waiting = undefined;
    } else this.approvals.push(approval);
  };
  next(timeoutMs = 10_000): Promise<Approval> {
    const first = this.approvals.shift();
    if (first) return Promise.resolve(first);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error("no pending approval in time")), timeoutMs);
      this.waiting = (a) => {
        clearTimeout(timer);
        resolve(a);
      };
    });
  }
}

/** A promise whose settling the test can look at without awaiting it. */
function track<T>(promise: Promise<T>) {
  const state = { done: false, promise };
  promise.then(
    () => (state.done = true),
    () => (state.done = true),
  );
  return state;
}

async function rejectsWith<E extends Error>(promise: Promise<unknown>, type: new (...args: never[]) => E): Promise<E> {
  try {
    await promise;
  } catch (e) {
    assert.ok(e instanceof type, `expected ${type.name}, got ${e}`);
    return e as E;
  }
  assert.fail(`expected ${type.name}, but the call succeeded`);
}

let envs: Env[] = [];
async function start(flags: string[] = []): Promise<Env> {
  const env = await Env.start(flags);
  envs.push(env);
  return env;
}
afterEach(async () => {
  await Promise.all(envs.map((e) => e.close()));
  envs = [];
});

const guardOf = (env: Env) => new Guard(env.client, env.agentKey);

test("an auto tool runs once", async () => {
  const env = await start();
  const tool = new FakeTool();
  const result = await guardOf(env).call("entra", "get_user", { user: "bob" }, "alice", tool.run);
  assert.deepEqual(tool.runs, [{ user: "bob" }]);
  assert.equal(result, 'ran with {"user":"bob"}');
});

test("an approval-needed tool runs once after the technician approves", async () => {
  const env = await start();
  const tool = new FakeTool();
  const pending = new Pending();
  const call = track(
    guardOf(env).call("entra", "add_user_to_group", ADD, "alice", tool.run, { onPending: pending.callback, timeoutMs: 30_000 }),
  );
  const approval = await pending.next();
  assert.equal(approval.state, "APPROVAL_STATE_PENDING");
  assert.equal(approval.arguments_json, '{"group":"Helpdesk","user":"bob"}');
  assert.equal(call.done, false);
  assert.deepEqual(tool.runs, []);

  await env.approve(approval.id);
  await call.promise;
  assert.deepEqual(tool.runs, [ADD]);
  assert.equal((await env.approval(approval.id)).state, "APPROVAL_STATE_CONSUMED");
});

test("a denied approval rejects with APPROVAL_DENIED and the tool never runs", async () => {
  const env = await start();
  const tool = new FakeTool();
  const pending = new Pending();
  const call = guardOf(env).call("entra", "reset_password", { user: "bob" }, "alice", tool.run, {
    onPending: pending.callback,
    timeoutMs: 30_000,
  });
  const denied = rejectsWith(call, ToolDenied);
  await env.approve((await pending.next()).id, false);
  const error = await denied;
  assert.equal(error.code, "APPROVAL_DENIED");
  assert.equal(error.reason, "an approver said no");
  assert.deepEqual(tool.runs, []);
});

test("a deadline rejects with a timeout, and a retry with the same request id resumes", async () => {
  const env = await start();
  const tool = new FakeTool();
  const pending = new Pending();
  const guard = guardOf(env);
  const timedOut = await rejectsWith(
    guard.call("entra", "add_user_to_group", ADD, "alice", tool.run, { requestId: "req-timeout", timeoutMs: 500, onPending: pending.callback }),
    ApprovalTimeout,
  );
  const approval = await pending.next();
  assert.equal(timedOut.approvalId, approval.id);
  assert.deepEqual(tool.runs, []);
  // Giving up does not withdraw the request: it stays pending until it expires.
  assert.equal((await env.approval(approval.id)).state, "APPROVAL_STATE_PENDING");

  // The same call again, same request id: the same approval, no second request.
  const call = guard.call("entra", "add_user_to_group", ADD, "alice", tool.run, {
    requestId: "req-timeout",
    onPending: pending.callback,
    timeoutMs: 30_000,
  });
  assert.equal((await pending.next()).id, approval.id);
  await env.approve(approval.id);
  await call;
  assert.deepEqual(tool.runs, [ADD]);
});

test("changed arguments under the same request id are refused", async () => {
  const env = await start();
  const tool = new FakeTool();
  const pending = new Pending();
  const guard = guardOf(env);
  await rejectsWith(
    guard.call("entra", "add_user_to_group", ADD, "alice", tool.run, { requestId: "req-1", timeoutMs: 200, onPending: pending.callback }),
    ApprovalTimeout,
  );
  await env.approve((await pending.next()).id);
  const denied = await rejectsWith(
    guard.call("entra", "add_user_to_group", { user: "bob", group: "Domain Admins" }, "alice", tool.run, { requestId: "req-1" }),
    ToolDenied,
  );
  assert.equal(denied.code, "APPROVAL_MISMATCH");
  assert.deepEqual(tool.runs, []);
});

test("a consumed approval gives one ALLOW, ever", async () => {
  const env = await start();
  const tool = new FakeTool();
  const pending = new Pending();
  const guard = guardOf(env);
  const call = guard.call("entra", "add_user_to_group", ADD, "alice", tool.run, {
    requestId: "req-once",
    onPending: pending.callback,
    timeoutMs: 30_000,
  });
  const approval = await pending.next();
  await env.approve(approval.id);
  await call;
  // Another request presenting the same approval is refused ...
  const other = await unary(
    env.client.Decide.bind(env.client),
    {
      integration_id: "entra",
      tool_name: "add_user_to_group",
      arguments_json: JSON.stringify(ADD),
      requester_id: "alice",
      request_id: "req-other",
      approval_id: approval.id,
    },
    bearer(env.agentKey),
  );
  assert.equal(decisionCode(other.code), "APPROVAL_CONSUMED");
  // ... and so is a retry of the consuming request: one approval, one ALLOW, ever. The
  // reason says it was this request that had it (see docs/integrating.md).
  const again = await rejectsWith(
    guard.call("entra", "add_user_to_group", ADD, "alice", tool.run, { requestId: "req-once" }),
    ToolDenied,
  );
  assert.equal(again.code, "APPROVAL_CONSUMED");
  assert.match(again.reason, /by this request_id/);
  assert.equal(tool.runs.length, 1);
});

test("an expired approval rejects with APPROVAL_EXPIRED", async () => {
  const env = await start(["--approval-ttl", "1s", "--expiry-sweep", "100ms"]);
  const tool = new FakeTool();
  const pending = new Pending();
  const error = await rejectsWith(
    guardOf(env).call("entra", "add_user_to_group", ADD, "alice", tool.run, { onPending: pending.callback, timeoutMs: 30_000 }),
    ToolDenied,
  );
  assert.equal(error.code, "APPROVAL_EXPIRED");
  assert.equal(error.approvalId, (await pending.next()).id);
  assert.deepEqual(tool.runs, []);
});

test("disabled and unknown tools reject with their code", async () => {
  const env = await start();
  const tool = new FakeTool();
  const guard = guardOf(env);
  const revision = await env.setPolicy("get_user", "POLICY_DISABLED");
  const disabled = await rejectsWith(guard.call("entra", "get_user", { user: "bob" }, "alice", tool.run, { minRevision: revision }), ToolDenied);
  assert.equal(disabled.code, "TOOL_DISABLED");
  const unknown = await rejectsWith(guard.call("entra", "drop_tenant", {}, "alice", tool.run), ToolDenied);
  assert.equal(unknown.code, "UNKNOWN_TOOL");
  assert.deepEqual(tool.runs, []);
});

test("a min_revision ahead of the server is UNAVAILABLE, not an old answer", async () => {
  const env = await start(["--min-revision-wait", "100ms"]);
  const tool = new FakeTool();
  const error = await rejectsWith(guardOf(env).call("entra", "get_user", { user: "bob" }, "alice", tool.run, { minRevision: 99 }), ToolgateError);
  assert.equal(error.code, "UNAVAILABLE");
  assert.deepEqual(tool.runs, []);
});

test("server down: the call rejects and the tool never runs", async () => {
  const env = await start();
  const tool = new FakeTool();
  await env.server.stop();
  const error = await rejectsWith(guardOf(env).call("entra", "get_user", { user: "bob" }, "alice", tool.run), ToolgateError);
  assert.equal(error.code, "UNAVAILABLE");

  // Nothing listening at all (a wrong address): the same.
  const port = await new Promise<number>((resolve) => {
    const s = createServer().listen(0, "127.0.0.1", () => {
      const { port } = s.address() as { port: number };
      s.close(() => resolve(port));
    });
  });
  const nowhere = connect(`127.0.0.1:${port}`);
  try {
    const error2 = await rejectsWith(new Guard(nowhere, env.agentKey).call("entra", "get_user", {}, "alice", tool.run), ToolgateError);
    assert.equal(error2.code, "UNAVAILABLE");
  } finally {
    nowhere.close();
  }
  assert.deepEqual(tool.runs, []);
});

test("waiting for an approval survives a server restart", async () => {
  const env = await start();
  const tool = new FakeTool();
  const pending = new Pending();
  const call = track(
    guardOf(env).call("entra", "add_user_to_group", ADD, "alice", tool.run, { onPending: pending.callback, timeoutMs: 60_000 }),
  );
  const approval = await pending.next();
  await env.server.waitForMetric('toolgate_watch_streams{watch="approvals"}', 1);
  await env.server.restart(); // the watch ends with UNAVAILABLE; the guard reconnects
  await env.server.waitForMetric('toolgate_watch_streams{watch="approvals"}', 1, 30_000);
  assert.equal(call.done, false);
  await env.approve(approval.id);
  await call.promise;
  assert.deepEqual(tool.runs, [ADD]);
});

/** A ToolSync that records what kind of event each one was. */
function recordingSync(env: Env, onChange?: (revision: number) => void, integrationId = "") {
  const events: string[] = [];
  const sync = new ToolSync(env.client, env.agentKey, {
    integrationId,
    onEvent: (e: WatchConfigResponse) => events.push(e.event === "snapshot" && e.snapshot?.reset ? "reset" : (e.event ?? "?")),
    onChange: (_tools, revision) => onChange?.(revision),
  });
  return { sync, events };
}

const names = (sync: ToolSync) => new Set(sync.tools().map((t) => t.name));

test("the tool sync follows Saves", async () => {
  const env = await start();
  const changes: number[] = [];
  const { sync, events } = recordingSync(env, (r) => changes.push(r));
  sync.start();
  try {
    assert.ok(await sync.waitUntil((s) => names(s).has("get_user"), 10_000));
    assert.equal(sync.tools().length, 11);
    assert.deepEqual(events, ["snapshot"]);

    let revision = await env.setPolicy("get_user", "POLICY_DISABLED");
    assert.ok(await sync.waitUntil((s) => s.revision === revision, 10_000));
    assert.ok(!names(sync).has("get_user"));
    assert.equal(changes.at(-1), revision);

    revision = await env.setPolicy("get_user", "POLICY_AUTO");
    assert.ok(await sync.waitUntil((s) => s.revision === revision, 10_000));
    assert.equal(sync.get("entra", "get_user")?.policy, "POLICY_AUTO");
    assert.deepEqual(events, ["snapshot", "change", "change"]);
  } finally {
    sync.stop();
  }
});

test("the tool sync resumes after a server restart", async () => {
  const env = await start();
  const { sync, events } = recordingSync(env);
  sync.start();
  try {
    assert.ok(await sync.waitUntil((s) => s.revision !== undefined, 10_000));
    await env.server.restart();
    // A Save on the new process reaches the sync once it has reconnected.
    const revision = await env.setPolicy("list_group_members", "POLICY_DISABLED");
    assert.ok(await sync.waitUntil((s) => s.revision === revision, 30_000));
    assert.ok(!names(sync).has("list_group_members"));
    // It resumed with since_revision: no second snapshot.
    assert.deepEqual(events, ["snapshot", "change"]);
  } finally {
    sync.stop();
  }
});

test("a tool sync too far behind gets a reset snapshot that replaces everything", async () => {
  const env = await start(["--watch-history", "1"]);
  const { sync, events } = recordingSync(env);
  sync.start();
  assert.ok(await sync.waitUntil((s) => names(s).has("get_user"), 10_000));
  sync.stop();
  // Two Saves while the sync is away: more than watch_history can replay.
  await env.setPolicy("get_user", "POLICY_DISABLED");
  const revision = await env.setPolicy("getSignInLogs", "POLICY_APPROVAL_NEEDED");
  sync.start();
  try {
    assert.ok(await sync.waitUntil((s) => s.revision === revision, 10_000));
    assert.deepEqual(events, ["snapshot", "reset"]);
    assert.ok(!names(sync).has("get_user"));
    assert.equal(sync.get("entra", "getSignInLogs")?.policy, "POLICY_APPROVAL_NEEDED");
  } finally {
    sync.stop();
  }
});

test("a tool sync with a wrong key stops with an error", async () => {
  const env = await start();
  const sync = new ToolSync(env.client, "tg_not_a_key").start();
  try {
    assert.equal(await sync.waitUntil((s) => s.revision !== undefined, 10_000), false);
    assert.equal(sync.error?.code, "UNAUTHENTICATED");
  } finally {
    sync.stop();
  }
});

test("an MCP tools/list connects with its annotations and reaches the sync", async () => {
  const env = await start();
  // What an MCP server's tools/list answers (one page here).
  const mcpTools = [
    {
      name: "read_file",
      description: "Read a file",
      inputSchema: { type: "object", properties: { path: { type: "string" } } },
      annotations: { readOnlyHint: true, openWorldHint: false },
    },
    { name: "delete_file", inputSchema: { type: "object" }, annotations: { destructiveHint: true, idempotentHint: true } },
    { name: "list_directory", inputSchema: { type: "object" } },
  ];
  const { sync, events } = recordingSync(env, undefined, "files");
  sync.start();
  try {
    assert.ok(await sync.waitUntil((s) => s.revision !== undefined, 10_000));
    const connected = await env.call("ConnectIntegration", mcpConnectRequest("files", mcpTools, { displayName: "Files" }), env.adminKey);
    const seeded = Object.fromEntries(connected.tools.map((t: { name: string; policy: string; source: string }) => [t.name, [t.policy, t.source]]));
    assert.deepEqual(seeded, {
      read_file: ["POLICY_AUTO", "POLICY_SOURCE_ANNOTATION"],
      delete_file: ["POLICY_APPROVAL_NEEDED", "POLICY_SOURCE_ANNOTATION"],
      list_directory: ["POLICY_AUTO", "POLICY_SOURCE_VERB"],
    });
    // The agent's list changes: this is where an MCP server sends tools/list_changed.
    assert.ok(await sync.waitUntil((s) => s.revision === connected.revision, 10_000));
    assert.deepEqual(names(sync), new Set(["read_file", "delete_file", "list_directory"]));
    const read = sync.get("files", "read_file")?.annotations;
    assert.equal(read?.read_only_hint, true);
    assert.equal(read?.open_world_hint, false);
    assert.equal(read?.destructive_hint, undefined); // not said stays not said
    assert.deepEqual(events, ["snapshot", "change"]);
  } finally {
    sync.stop();
  }

  const tool = new FakeTool();
  await guardOf(env).call("files", "read_file", { path: "/etc/motd" }, "alice", tool.run);
  assert.deepEqual(tool.runs, [{ path: "/etc/motd" }]);
});
