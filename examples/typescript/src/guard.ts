// Guard an AI agent's tool calls with toolgate. Copy this file into your agent backend.
//
//   import { connect, Guard, ToolSync } from "./guard.js";
//
//   const client = connect("127.0.0.1:50051");
//   const guard = new Guard(client, AGENT_KEY);
//
//   // Runs addUserToGroup(args) only once toolgate answers ALLOW: at once for an `auto`
//   // tool, after the approvers said yes for an `approval_needed` one.
//   const result = await guard.call("entra", "add_user_to_group", { user: "bob", group: "Helpdesk" },
//                                   "alice", addUserToGroup);
//
//   // The tools the agent may offer, kept in sync with the admins' Saves.
//   const tools = new ToolSync(client, AGENT_KEY, { onChange: () => notifyToolsListChanged() });
//   tools.start();
//
// Every failure to get an ALLOW rejects with a GuardError and leaves the tool unrun:
// - ToolDenied: toolgate answered DENY; `code` is the DecisionCode without its prefix
//   ("TOOL_DISABLED", "UNKNOWN_TOOL", "APPROVAL_DENIED", "APPROVAL_EXPIRED",
//   "APPROVAL_CONSUMED", "APPROVAL_MISMATCH", "MANAGER_UNKNOWN"), `reason` the server's
//   sentence.
// - ApprovalTimeout: nobody decided before the deadline. The approval stays pending on the
//   server until it expires; calling again with the same requestId resumes waiting for it.
// - ToolgateError: the call to toolgate itself failed (`code` is the gRPC status name, e.g.
//   "UNAVAILABLE"). Fail closed: never run the tool because toolgate could not be asked.
//
// Needs @grpc/grpc-js and @grpc/proto-loader; the .proto is loaded at run time (see
// `connect`). See docs/integrating.md for the loop, its failure modes, retries and the MCP
// mapping.

import { randomUUID } from "node:crypto";
import { fileURLToPath } from "node:url";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";

// ---- The messages, as @grpc/proto-loader hands them over with LOAD_OPTIONS: field names
// as in the .proto, enums as their names, uint64 as number. Only what the guard uses.

export type Verdict = "VERDICT_UNSPECIFIED" | "VERDICT_ALLOW" | "VERDICT_PENDING_APPROVAL" | "VERDICT_DENY";
export type Policy = "POLICY_UNSPECIFIED" | "POLICY_AUTO" | "POLICY_APPROVAL_NEEDED" | "POLICY_DISABLED";
export type ApprovalState =
  | "APPROVAL_STATE_UNSPECIFIED"
  | "APPROVAL_STATE_PENDING"
  | "APPROVAL_STATE_APPROVED"
  | "APPROVAL_STATE_DENIED"
  | "APPROVAL_STATE_EXPIRED"
  | "APPROVAL_STATE_CONSUMED"
  | "APPROVAL_STATE_CANCELLED";
export type ApproverRole = "APPROVER_ROLE_UNSPECIFIED" | "APPROVER_ROLE_TECHNICIAN" | "APPROVER_ROLE_MANAGER";
export type DecisionCodeName =
  | "DECISION_CODE_UNSPECIFIED"
  | "DECISION_CODE_POLICY_AUTO"
  | "DECISION_CODE_TOOL_DISABLED"
  | "DECISION_CODE_UNKNOWN_TOOL"
  | "DECISION_CODE_APPROVAL_REQUIRED"
  | "DECISION_CODE_APPROVAL_PENDING"
  | "DECISION_CODE_APPROVAL_GRANTED"
  | "DECISION_CODE_APPROVAL_DENIED"
  | "DECISION_CODE_APPROVAL_EXPIRED"
  | "DECISION_CODE_APPROVAL_CONSUMED"
  | "DECISION_CODE_APPROVAL_MISMATCH"
  | "DECISION_CODE_MANAGER_UNKNOWN";

export interface Timestamp {
  seconds: number;
  nanos: number;
}

export interface ToolAnnotations {
  read_only_hint?: boolean;
  destructive_hint?: boolean;
  idempotent_hint?: boolean;
  open_world_hint?: boolean;
}

export interface Tool {
  integration_id: string;
  name: string;
  description: string;
  input_schema_json: string;
  annotations: ToolAnnotations | null;
  policy: Policy;
  manager_approval: boolean;
  revision: number;
}

export interface ToolRef {
  integration_id: string;
  tool_name: string;
}

export interface Approval {
  id: string;
  state: ApprovalState;
  integration_id: string;
  tool_name: string;
  arguments_json: string;
  arguments_sha256: string;
  requester_id: string;
  request_id: string;
  required_roles: ApproverRole[];
  created_at: Timestamp | null;
  expires_at: Timestamp | null;
}

export interface ToolDefinition {
  name: string;
  description?: string;
  input_schema_json?: string;
  annotations?: ToolAnnotations;
}

export interface ConnectIntegrationRequest {
  integration_id: string;
  kind?: string;
  display_name?: string;
  tools: ToolDefinition[];
}

export interface DecideRequest {
  integration_id: string;
  tool_name: string;
  arguments_json: string;
  requester_id: string;
  request_id: string;
  approval_id?: string;
  min_revision?: number;
}

export interface DecideResponse {
  verdict: Verdict;
  code: DecisionCodeName;
  reason: string;
  revision: number;
  approval: Approval | null;
}

export interface WatchApprovalsRequest {
  approval_id?: string;
}

export interface WatchApprovalsResponse {
  approval: Approval | null;
}

export interface WatchConfigRequest {
  since_revision?: number;
  integration_id?: string;
}

export interface WatchConfigResponse {
  revision: number;
  event?: "snapshot" | "change" | "heartbeat";
  snapshot?: { tools: Tool[]; reset: boolean } | null;
  change?: { upserted: Tool[]; removed: ToolRef[] } | null;
}

type Callback<Res> = (error: grpc.ServiceError | null, response?: Res) => void;
export type UnaryMethod<Req, Res> = (
  request: Req,
  metadata: grpc.Metadata,
  options: grpc.CallOptions,
  callback: Callback<Res>,
) => grpc.ClientUnaryCall;
export type StreamMethod<Req, Res> = (
  request: Req,
  metadata: grpc.Metadata,
  options?: grpc.CallOptions,
) => grpc.ClientReadableStream<Res>;

/** The PolicyService client as the guard uses it. The other methods are there too (as `any`). */
export interface PolicyServiceClient extends grpc.Client {
  Decide: UnaryMethod<DecideRequest, DecideResponse>;
  WatchApprovals: StreamMethod<WatchApprovalsRequest, WatchApprovalsResponse>;
  WatchConfig: StreamMethod<WatchConfigRequest, WatchConfigResponse>;
  [method: string]: any; // eslint-disable-line @typescript-eslint/no-explicit-any
}

// ---- Connecting.

/** Where toolgate.proto is found by default: the repository's proto/ next to examples/. */
export const DEFAULT_PROTO_DIR = process.env.TOOLGATE_PROTO_DIR ?? fileURLToPath(new URL("../../../proto/", import.meta.url));

export const LOAD_OPTIONS: protoLoader.Options = {
  keepCase: true, // field names as in the .proto (and the docs, and grpcurl)
  longs: Number, // revisions are counters far below 2^53
  enums: String,
  defaults: true,
  oneofs: true, // WatchConfigResponse.event names the event that is set
};

export interface ConnectOptions {
  /** Folder holding toolgate/v1/toolgate.proto. */
  protoDir?: string;
  /** grpc.credentials.createSsl(...) when the server has tls_cert. */
  credentials?: grpc.ChannelCredentials;
}

/** A PolicyService client that reconnects quickly after a server restart. */
export function connect(target: string, options: ConnectOptions = {}): PolicyServiceClient {
  const definition = protoLoader.loadSync("toolgate/v1/toolgate.proto", {
    ...LOAD_OPTIONS,
    includeDirs: [options.protoDir ?? DEFAULT_PROTO_DIR],
  });
  const loaded = grpc.loadPackageDefinition(definition) as any; // eslint-disable-line @typescript-eslint/no-explicit-any
  const Client = loaded.toolgate.v1.PolicyService as grpc.ServiceClientConstructor;
  return new Client(target, options.credentials ?? grpc.credentials.createInsecure(), {
    "grpc.initial_reconnect_backoff_ms": 200,
    "grpc.max_reconnect_backoff_ms": 5000,
    // Notice a dead connection while a watch is idle.
    "grpc.keepalive_time_ms": 30_000,
    "grpc.keepalive_timeout_ms": 10_000,
    "grpc.keepalive_permit_without_calls": 1,
  }) as unknown as PolicyServiceClient;
}

/** Calls a unary method bound to its client: `unary(client.Decide.bind(client), ...)`. */
export function unary<Req, Res>(
  method: UnaryMethod<Req, Res>,
  request: Req,
  metadata: grpc.Metadata,
  options: grpc.CallOptions = {},
): Promise<Res> {
  return new Promise((resolve, reject) => {
    method(request, metadata, options, (error, response) => (error ? reject(error) : resolve(response as Res)));
  });
}

/** The call's credentials; `waitForReady` makes a call wait for a server that is down. */
export function bearer(apiKey: string, options: grpc.MetadataOptions = {}): grpc.Metadata {
  const metadata = new grpc.Metadata(options);
  metadata.set("authorization", `Bearer ${apiKey}`);
  return metadata;
}

// ---- Errors: every one means the tool did not run.

export class GuardError extends Error {
  constructor(
    readonly code: string,
    readonly reason: string,
    readonly approvalId = "",
  ) {
    super(`${code}: ${reason}`);
    this.name = new.target.name;
  }
}

/** toolgate answered DENY. */
export class ToolDenied extends GuardError {}

/** The approval was still pending at the deadline. */
export class ApprovalTimeout extends GuardError {}

/** The call to toolgate failed; `status` is the gRPC status code. */
export class ToolgateError extends GuardError {
  readonly status: grpc.status;
  constructor(error: unknown, approvalId = "") {
    const e = error as Partial<grpc.ServiceError>;
    const status = typeof e.code === "number" ? e.code : grpc.status.UNKNOWN;
    super(grpc.status[status] ?? "UNKNOWN", e.details ?? String(error), approvalId);
    this.status = status;
  }
}

/** "DECISION_CODE_APPROVAL_DENIED" -> "APPROVAL_DENIED". */
export function decisionCode(code: DecisionCodeName): string {
  return code.replace(/^DECISION_CODE_/, "");
}

// Stream failures after which the guard or the sync reconnects (the server drains on
// shutdown with UNAVAILABLE; a watcher that fell behind gets RESOURCE_EXHAUSTED).
const RECONNECT = new Set<grpc.status>([
  grpc.status.UNAVAILABLE,
  grpc.status.RESOURCE_EXHAUSTED,
  grpc.status.INTERNAL,
  grpc.status.UNKNOWN,
  grpc.status.ABORTED,
]);

const delay = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

// ---- The guard.

export interface GuardOptions {
  /** Bound on each Decide call. */
  decideTimeoutMs?: number;
  /** How long `call` waits for people to approve, unless the call says otherwise. */
  approvalTimeoutMs?: number;
}

export interface CallOptions {
  /** Names this call: reuse it when retrying the same call (after a timeout, a crash or
   * UNAVAILABLE) and toolgate finds the approval it already asked for. Default: a new id. */
  requestId?: string;
  /** How long to wait for the approvers. */
  timeoutMs?: number;
  /** The revision an admin's Save returned: never decide from an older configuration. */
  minRevision?: number;
  /** Called with the approval whenever Decide answers PENDING_APPROVAL. */
  onPending?: (approval: Approval) => void;
}

export type Arguments = Record<string, unknown>;

/** Asks toolgate before every tool call and runs the tool only on ALLOW. */
export class Guard {
  private readonly decideTimeoutMs: number;
  private readonly approvalTimeoutMs: number;

  constructor(
    private readonly client: PolicyServiceClient,
    private readonly apiKey: string,
    options: GuardOptions = {},
  ) {
    this.decideTimeoutMs = options.decideTimeoutMs ?? 5_000;
    this.approvalTimeoutMs = options.approvalTimeoutMs ?? 15 * 60_000;
  }

  /** Runs `run(args)` once toolgate allows this exact call, and returns its result. The tool
   * gets the arguments as toolgate saw them (a fresh copy): what was approved is what runs. */
  async call<T>(
    integrationId: string,
    toolName: string,
    args: Arguments,
    requesterId: string,
    run: (args: Arguments) => T | Promise<T>,
    options: CallOptions = {},
  ): Promise<T> {
    const argumentsJson = JSON.stringify(args);
    const deadline = Date.now() + (options.timeoutMs ?? this.approvalTimeoutMs);
    const request: DecideRequest = {
      integration_id: integrationId,
      tool_name: toolName,
      arguments_json: argumentsJson,
      requester_id: requesterId,
      request_id: options.requestId ?? `req_${randomUUID()}`,
      min_revision: options.minRevision,
    };
    let answer = await this.decide(request);
    while (answer.verdict === "VERDICT_PENDING_APPROVAL") {
      const approval = answer.approval!;
      options.onPending?.(approval);
      await this.waitForDecision(approval.id, deadline);
      // Someone decided: ask again with the approval. The server is the judge (it also
      // checks expiry, the policy in force now and that the call is the same).
      request.approval_id = approval.id;
      answer = await this.decide(request);
    }
    if (answer.verdict !== "VERDICT_ALLOW") {
      throw new ToolDenied(decisionCode(answer.code), answer.reason, answer.approval?.id ?? "");
    }
    return run(JSON.parse(argumentsJson) as Arguments);
  }

  private async decide(request: DecideRequest): Promise<DecideResponse> {
    try {
      return await unary(this.client.Decide.bind(this.client), request, bearer(this.apiKey), {
        deadline: Date.now() + this.decideTimeoutMs,
      });
    } catch (e) {
      throw new ToolgateError(e, request.approval_id);
    }
  }

  /** Resolves once the approval is no longer pending; rejects with ApprovalTimeout at the
   * deadline. Reconnects the watch when it breaks: it starts again with the approval's
   * current state, so no decision is missed. */
  private async waitForDecision(approvalId: string, deadline: number): Promise<void> {
    let backoff = 100;
    for (;;) {
      if (Date.now() >= deadline) {
        throw new ApprovalTimeout("APPROVAL_TIMEOUT", "no decision before the deadline", approvalId);
      }
      const outcome = await this.watchOnce(approvalId, deadline);
      if (outcome === "decided") return;
      if (outcome === "deadline") continue; // the loop's check throws ApprovalTimeout
      if (outcome !== "broken") throw new ToolgateError(outcome, approvalId);
      // Back off so a server that keeps refusing is not hammered.
      await delay(Math.min(backoff, Math.max(0, deadline - Date.now())));
      backoff = Math.min(backoff * 2, 5_000);
    }
  }

  private watchOnce(approvalId: string, deadline: number): Promise<"decided" | "deadline" | "broken" | grpc.ServiceError> {
    return new Promise((resolve) => {
      const stream = this.client.WatchApprovals(
        { approval_id: approvalId },
        // While the server is down (restart, failover) wait for it, up to the deadline.
        bearer(this.apiKey, { waitForReady: true }),
        { deadline },
      );
      let settled = false;
      const settle = (outcome: "decided" | "deadline" | "broken" | grpc.ServiceError) => {
        if (settled) return;
        settled = true;
        resolve(outcome);
        stream.cancel();
      };
      stream.on("data", (event: WatchApprovalsResponse) => {
        if (event.approval && event.approval.state !== "APPROVAL_STATE_PENDING") settle("decided");
      });
      stream.on("error", (error: grpc.ServiceError) => {
        if (error.code === grpc.status.DEADLINE_EXCEEDED) settle("deadline");
        else if (RECONNECT.has(error.code)) settle("broken");
        else settle(error);
      });
      stream.on("end", () => settle("broken"));
    });
  }
}

// ---- The tool-list sync.

export type ToolKey = `${string}/${string}`;
const keyOf = (integrationId: string, name: string): ToolKey => `${integrationId}/${name}`;

export interface ToolSyncOptions {
  /** Only this integration's tools; empty: every integration. */
  integrationId?: string;
  /** Called after every snapshot and change: the place to send MCP's
   * `notifications/tools/list_changed`. */
  onChange?: (tools: Tool[], revision: number) => void;
  /** Called with every event, for logging or tests. */
  onEvent?: (event: WatchConfigResponse) => void;
}

/**
 * Keeps the tools the caller may use in sync with toolgate's WatchConfig stream.
 *
 * The first event is a snapshot of every tool; then one change per saved revision. When the
 * stream breaks it reconnects with `since_revision` and gets exactly the changes it missed,
 * or a snapshot with `reset` that replaces everything when it was too far behind. For an
 * agent key a disabled or removed tool arrives as a removal.
 */
export class ToolSync {
  /** The revision the tool list is at; undefined before the first snapshot. */
  revision: number | undefined;
  /** Set when the sync gave up (a failure that reconnecting cannot fix). */
  error: ToolgateError | undefined;

  private readonly toolMap = new Map<ToolKey, Tool>();
  private stream: grpc.ClientReadableStream<WatchConfigResponse> | undefined;
  private retry: NodeJS.Timeout | undefined;
  private running = false;
  private backoff = 100;
  private waiters = new Set<() => void>();

  // Failures that reconnecting will not fix: a bad or revoked key, a wrong role.
  private static readonly FATAL = new Set<grpc.status>([
    grpc.status.UNAUTHENTICATED,
    grpc.status.PERMISSION_DENIED,
    grpc.status.INVALID_ARGUMENT,
  ]);

  constructor(
    private readonly client: PolicyServiceClient,
    private readonly apiKey: string,
    private readonly options: ToolSyncOptions = {},
  ) {}

  /** The tools now, sorted by integration and name. */
  tools(): Tool[] {
    return [...this.toolMap.entries()].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)).map(([, t]) => t);
  }

  get(integrationId: string, name: string): Tool | undefined {
    return this.toolMap.get(keyOf(integrationId, name));
  }

  /** Starts following; resumes from `revision` if it has one. */
  start(): this {
    if (this.running) throw new Error("already started");
    this.running = true;
    this.error = undefined;
    this.follow();
    return this;
  }

  stop(): void {
    this.running = false;
    clearTimeout(this.retry);
    this.stream?.cancel();
    this.stream = undefined;
    this.notify();
  }

  /** Resolves true once `predicate(this)` holds (checked after every event), false on timeout. */
  waitUntil(predicate: (sync: this) => boolean, timeoutMs: number): Promise<boolean> {
    return new Promise((resolve) => {
      const check = () => {
        if (predicate(this)) finish(true);
        else if (this.error || !this.running) finish(false);
      };
      const timer = setTimeout(() => finish(predicate(this)), timeoutMs);
      const finish = (ok: boolean) => {
        clearTimeout(timer);
        this.waiters.delete(check);
        resolve(ok);
      };
      this.waiters.add(check);
      check();
    });
  }

  private notify(): void {
    for (const check of [...this.waiters]) check();
  }

  private follow(): void {
    const request: WatchConfigRequest = { integration_id: this.options.integrationId ?? "" };
    if (this.revision !== undefined) request.since_revision = this.revision;
    const stream = this.client.WatchConfig(request, bearer(this.apiKey, { waitForReady: true }));
    this.stream = stream;
    let over = false;
    const reconnect = () => {
      if (over) return;
      over = true;
      stream.cancel();
      if (!this.running || this.stream !== stream) return;
      this.stream = undefined;
      this.retry = setTimeout(() => this.running && this.follow(), this.backoff);
      this.backoff = Math.min(this.backoff * 2, 5_000);
    };
    stream.on("data", (event: WatchConfigResponse) => {
      if (this.stream !== stream) return; // stopped or replaced: ignore what was in flight
      this.backoff = 100;
      this.apply(event);
    });
    stream.on("error", (error: grpc.ServiceError) => {
      if (!this.running || this.stream !== stream) return; // stopped: the cancel's own error
      if (ToolSync.FATAL.has(error.code)) {
        over = true;
        this.error = new ToolgateError(error);
        this.running = false;
        this.stream = undefined;
        this.notify();
        return;
      }
      reconnect();
    });
    stream.on("end", reconnect);
  }

  private apply(event: WatchConfigResponse): void {
    if (event.event === "snapshot" && event.snapshot) {
      // A snapshot (first, or `reset` after falling behind) replaces everything.
      this.toolMap.clear();
      for (const t of event.snapshot.tools) this.toolMap.set(keyOf(t.integration_id, t.name), t);
    } else if (event.event === "change" && event.change) {
      for (const t of event.change.upserted) this.toolMap.set(keyOf(t.integration_id, t.name), t);
      for (const r of event.change.removed) this.toolMap.delete(keyOf(r.integration_id, r.tool_name));
    }
    this.revision = event.revision;
    this.options.onEvent?.(event);
    if (event.event === "snapshot" || event.event === "change") {
      this.options.onChange?.(this.tools(), event.revision);
    }
    this.notify();
  }
}

// ---- MCP.

/** A tool as an MCP server's `tools/list` describes it. */
export interface McpTool {
  name: string;
  description?: string;
  inputSchema?: object;
  annotations?: { readOnlyHint?: boolean; destructiveHint?: boolean; idempotentHint?: boolean; openWorldHint?: boolean; [k: string]: unknown };
}

/** MCP's tool annotations and the ToolAnnotations fields they carry over to. */
export const MCP_HINTS = {
  readOnlyHint: "read_only_hint",
  destructiveHint: "destructive_hint",
  idempotentHint: "idempotent_hint",
  openWorldHint: "open_world_hint",
} as const;

/**
 * An MCP server's `tools/list` result (every page's `tools`) as a ConnectIntegration request.
 *
 * Send it with an admin key whenever the MCP server's tool list changes: new tools get a
 * seeded policy, known tools keep theirs, and tools missing from the list are removed (so
 * gather every page first). Only the hints the server sent are carried over: toolgate reads
 * an unset hint as "not said" and seeds from the tool's name instead.
 */
export function mcpConnectRequest(
  integrationId: string,
  mcpTools: McpTool[],
  options: { kind?: string; displayName?: string } = {},
): ConnectIntegrationRequest {
  return {
    integration_id: integrationId,
    kind: options.kind ?? "mcp",
    display_name: options.displayName ?? "",
    tools: mcpTools.map((tool) => {
      const annotations: ToolAnnotations = {};
      for (const [theirs, ours] of Object.entries(MCP_HINTS)) {
        const hint = tool.annotations?.[theirs];
        if (hint !== undefined) annotations[ours] = Boolean(hint);
      }
      return {
        name: tool.name,
        description: tool.description ?? "",
        input_schema_json: tool.inputSchema ? JSON.stringify(tool.inputSchema) : "",
        annotations,
      };
    }),
  };
}
