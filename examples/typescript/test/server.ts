// Starts the real toolgate binary for the tests: a fresh SQLite database per test, keys for
// the three roles, the sample integration connected and the sample directory synced.
// TOOLGATE_BIN names the binary (default: target/debug/toolgate of this repository).

import { spawn, execFileSync, type ChildProcess } from "node:child_process";
import { accessSync, constants, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { isAbsolute, join, resolve } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import * as grpc from "@grpc/grpc-js";
import { bearer, connect, unary, type Approval, type PolicyServiceClient } from "../src/guard.js";

const REPO = fileURLToPath(new URL("../../../", import.meta.url));
const EXAMPLES = join(REPO, "examples");

function binary(): string {
  const configured = process.env.TOOLGATE_BIN || join(REPO, "target", "debug", "toolgate");
  const path = isAbsolute(configured) ? configured : resolve(REPO, configured);
  try {
    accessSync(path, constants.X_OK);
  } catch {
    throw new Error(`no toolgate binary at ${path}: build it (cargo build) or set TOOLGATE_BIN`);
  }
  return path;
}

/** One toolgate server process on 127.0.0.1, restartable on the same port and database. */
export class Toolgate {
  readonly bin = binary();
  readonly dir = mkdtempSync(join(tmpdir(), "toolgate-ts-"));
  readonly databaseUrl = `sqlite://${join(this.dir, "toolgate.db")}`;
  address = "127.0.0.1:0";
  metricsAddress = "";
  log: string[] = [];
  private process: ChildProcess | undefined;

  constructor(private readonly flags: string[] = []) {}

  mint(role: "admin" | "agent" | "approver"): string {
    return execFileSync(this.bin, ["keys", "create", "--tenant", "acme", "--role", role, "--database-url", this.databaseUrl], {
      encoding: "utf8",
      stdio: ["ignore", "pipe", "pipe"],
      timeout: 30_000,
    }).trim();
  }

  /** Starts the server; resolves once it logged its address. */
  start(timeoutMs = 30_000): Promise<void> {
    const child = spawn(
      this.bin,
      ["serve", "--listen", this.address, "--database-url", this.databaseUrl, "--metrics-listen", "127.0.0.1:0", "--shutdown-grace", "2s", ...this.flags],
      { stdio: ["ignore", "ignore", "pipe"] },
    );
    this.process = child;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => fail(new Error("toolgate did not start in time")), timeoutMs);
      const fail = (error: Error) => {
        clearTimeout(timer);
        child.kill("SIGKILL");
        reject(new Error(`${error.message}:\n${this.log.join("\n")}`));
      };
      child.on("error", fail);
      child.on("exit", (code) => fail(new Error(`toolgate exited with ${code}`)));
      createInterface({ input: child.stderr! }).on("line", (line) => {
        this.log.push(line);
        const metrics = /metrics serving at \/metrics addr=(\S+)/.exec(line);
        if (metrics) this.metricsAddress = metrics[1];
        const serving = /toolgate serving addr=(\S+)/.exec(line);
        if (serving) {
          this.address = serving[1]; // a restart reuses the port
          clearTimeout(timer);
          child.removeAllListeners("exit");
          resolve();
        }
      });
    });
  }

  /** SIGTERM, as an orchestrator would: streams end with UNAVAILABLE, then exit 0. */
  async stop(): Promise<void> {
    const child = this.process;
    this.process = undefined;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise((resolve) => child.once("exit", resolve));
    child.kill("SIGTERM");
    const timer = setTimeout(() => child.kill("SIGKILL"), 30_000);
    await exited;
    clearTimeout(timer);
  }

  async restart(): Promise<void> {
    await this.stop();
    await this.start();
  }

  /** One series of GET /metrics, e.g. 'toolgate_watch_streams{watch="approvals"}'. */
  async metric(series: string): Promise<number> {
    const text = await (await fetch(`http://${this.metricsAddress}/metrics`)).text();
    for (const line of text.split("\n")) {
      const at = line.lastIndexOf(" ");
      if (line.slice(0, at) === series) return Number(line.slice(at + 1));
    }
    throw new Error(`no metric ${series}`);
  }

  /** Polls the metric until it has the value (observable state, with a deadline). */
  async waitForMetric(series: string, value: number, timeoutMs = 10_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while ((await this.metric(series)) !== value) {
      if (Date.now() > deadline) throw new Error(`${series} is ${await this.metric(series)}, not ${value}`);
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  cleanup(): void {
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/** A running server with the sample data, its keys, and a client for the test's side. */
export class Env {
  readonly adminKey: string;
  readonly agentKey: string;
  readonly approverKey: string;
  readonly client: PolicyServiceClient;

  private constructor(readonly server: Toolgate) {
    this.adminKey = server.mint("admin");
    this.agentKey = server.mint("agent");
    this.approverKey = server.mint("approver");
    this.client = connect(server.address);
  }

  static async start(flags: string[] = []): Promise<Env> {
    const server = new Toolgate(flags);
    await server.start();
    const env = new Env(server);
    await env.call("ConnectIntegration", JSON.parse(readFileSync(join(EXAMPLES, "entra-connect.json"), "utf8")), env.adminKey);
    await env.call("UpsertPeople", JSON.parse(readFileSync(join(EXAMPLES, "people.json"), "utf8")), env.adminKey);
    return env;
  }

  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  call(method: string, request: object, key: string): Promise<any> {
    return unary(this.client[method].bind(this.client), request, bearer(key), { deadline: Date.now() + 10_000 });
  }

  /** An admin's Save; returns the new revision. */
  async setPolicy(tool: string, policy: string): Promise<number> {
    const saved = await this.call("SetPolicy", { changes: [{ integration_id: "entra", tool_name: tool, policy }] }, this.adminKey);
    return saved.revision;
  }

  /** The technician's answer, as the approval bridge would report it. */
  async approve(approvalId: string, yes = true): Promise<Approval> {
    const answer = await this.call(
      "SubmitApproval",
      { approval_id: approvalId, role: "APPROVER_ROLE_TECHNICIAN", approver_id: "tom", approve: yes, comment: yes ? "ticket 4711" : "not without a ticket" },
      this.approverKey,
    );
    return answer.approval;
  }

  async approval(approvalId: string): Promise<Approval> {
    return (await this.call("GetApproval", { approval_id: approvalId }, this.adminKey)).approval;
  }

  async close(): Promise<void> {
    (this.client as grpc.Client).close();
    await this.server.stop();
    this.server.cleanup();
  }
}
