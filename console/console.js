// The toolgate console. It calls toolgate.v1.PolicyService through POST /api/<Method>
// (the request and response messages in the protobuf JSON mapping), with the API key the
// person signed in with, kept in this tab's session storage only and never in a URL.
// Everything shown is built with textContent: nothing from the server is read as HTML.

const KEY = "toolgate.key";
const APPROVER = "toolgate.approver";
const POLICIES = ["POLICY_AUTO", "POLICY_APPROVAL_NEEDED", "POLICY_DISABLED"];
const POLICY_NAMES = { POLICY_AUTO: "auto", POLICY_APPROVAL_NEEDED: "approval needed", POLICY_DISABLED: "disabled", POLICY_UNSPECIFIED: "none" };
const SOURCE_NAMES = {
  POLICY_SOURCE_ANNOTATION: "annotations", POLICY_SOURCE_VERB: "name's verb",
  POLICY_SOURCE_FALLBACK: "fallback", POLICY_SOURCE_ADMIN: "admin",
};

const $ = (id) => document.getElementById(id);

class ApiError extends Error {
  constructor(code, message) {
    super(`${code}: ${message}`);
    this.code = code;
    this.detail = message;
  }
}

const state = {
  key: sessionStorage.getItem(KEY),
  // The displayed tools, by "integration/name", and the revision they are at.
  tools: new Map(),
  revision: "0",
  // Unsaved edits by tool, and the revision the first of them was made at: a Save is
  // guarded by it, so a Save made by someone else in between is a conflict, not lost.
  edits: new Map(),
  editBase: null,
  watches: null,
  revisionsToken: "",
  // Which load of the approvals is the latest: an earlier one that answers later is dropped.
  approvalsLoad: 0,
};

async function api(method, body = {}) {
  const response = await fetch(`/api/${method}`, {
    method: "POST",
    headers: { authorization: `Bearer ${state.key}`, "content-type": "application/json" },
    body: JSON.stringify(body),
    cache: "no-store",
  });
  const data = await response.json().catch(() => ({}));
  if (!response.ok) throw new ApiError(data.code || String(response.status), data.message || response.statusText);
  return data;
}

// A server-streaming call: calls `onMessage` with each message until the stream ends or
// `signal` aborts it; throws the stream's error.
async function stream(method, body, signal, onMessage) {
  const response = await fetch(`/api/${method}`, {
    method: "POST",
    headers: { authorization: `Bearer ${state.key}`, "content-type": "application/json" },
    body: JSON.stringify(body),
    signal,
  });
  if (!response.ok) {
    const data = await response.json().catch(() => ({}));
    throw new ApiError(data.code || String(response.status), data.message || response.statusText);
  }
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffered = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffered += decoder.decode(value, { stream: true });
    let newline;
    while ((newline = buffered.indexOf("\n")) >= 0) {
      const line = JSON.parse(buffered.slice(0, newline));
      buffered = buffered.slice(newline + 1);
      if (line.error) throw new ApiError(line.error.code, line.error.message);
      onMessage(line.result);
    }
  }
}

function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (value === true) node.setAttribute(name, "");
    else if (value !== false && value != null) node.setAttribute(name, value);
  }
  for (const child of children.flat()) {
    if (child != null) node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function say(text) {
  $("alert").textContent = "";
  $("status").textContent = text;
}

function complain(error) {
  $("status").textContent = "";
  $("alert").textContent = error instanceof ApiError ? `${error.code}: ${error.detail}` : String(error);
}

const toolKey = (t) => `${t.integrationId}/${t.name}`;
const when = (timestamp) => (timestamp ? new Date(timestamp).toLocaleString() : "");

// ---------------------------------------------------------------------------------------
// Signing in

async function signIn(key) {
  state.key = key;
  try {
    // Every role may list approvals: this checks the key.
    await api("ListApprovals", { pageSize: 1 });
  } catch (e) {
    state.key = null;
    sessionStorage.removeItem(KEY);
    $("sign-in").hidden = false;
    $("app").hidden = true;
    complainAtSignIn(e);
    return;
  }
  sessionStorage.setItem(KEY, key);
  $("key").value = "";
  $("sign-in").hidden = true;
  $("app").hidden = false;
  $("sign-out").hidden = false;
  $("approver-id").value = sessionStorage.getItem(APPROVER) || "";
  state.watches = new AbortController();
  let admin = true;
  try {
    await loadTools();
    watchConfig(state.watches.signal);
  } catch (e) {
    if (e.code !== "PERMISSION_DENIED") throw e;
    admin = false;
  }
  $("who").textContent = admin ? "signed in with an admin key" : "signed in with an approver key";
  for (const tab of ["policies", "history", "deliveries"]) $(`tab-${tab}`).hidden = !admin;
  show(admin ? "policies" : "approvals");
  watchApprovals(state.watches.signal);
}

function complainAtSignIn(error) {
  let message = error instanceof ApiError ? `${error.code}: ${error.detail}` : String(error);
  if (error.code === "UNAUTHENTICATED") message = "That key was refused: it is unknown or revoked.";
  let note = $("sign-in-error");
  if (!note) {
    note = el("p", { id: "sign-in-error", role: "alert" });
    $("sign-in").append(note);
  }
  note.textContent = message;
}

function signOut() {
  state.watches?.abort();
  state.key = null;
  state.tools.clear();
  state.edits.clear();
  state.editBase = null;
  sessionStorage.removeItem(KEY);
  $("app").hidden = true;
  $("sign-out").hidden = true;
  $("sign-in").hidden = false;
  $("who").textContent = "";
  $("key").focus();
}

function show(view) {
  for (const name of ["policies", "approvals", "history", "deliveries"]) {
    const selected = name === view;
    $(`tab-${name}`).setAttribute("aria-selected", String(selected));
    $(`view-${name}`).hidden = !selected;
  }
  if (view === "approvals") loadApprovals().catch(complain);
  if (view === "history") loadRevisions(true).catch(complain);
  if (view === "deliveries") loadDeliveries().catch(complain);
}

// ---------------------------------------------------------------------------------------
// Policies

async function loadTools() {
  const answer = await api("ListTools", { includeDisabled: true });
  // A live update may have brought a newer revision while this was on its way.
  if (BigInt(answer.revision || "0") < BigInt(state.revision)) return;
  state.tools = new Map((answer.tools || []).map((t) => [toolKey(t), t]));
  state.revision = answer.revision || "0";
  dropEditsOfRemovedTools();
  renderTools();
}

// An unsaved edit of a tool that a Save elsewhere removed cannot be saved: it is dropped,
// and the person is told.
function dropEditsOfRemovedTools() {
  const gone = [...state.edits.keys()].filter((key) => !state.tools.has(key));
  for (const key of gone) state.edits.delete(key);
  if (state.edits.size === 0) state.editBase = null;
  if (gone.length) {
    complain(`${gone.join(", ")} no longer exist${gone.length === 1 ? "s" : ""} (revision ${state.revision}): your unsaved change to ${gone.length === 1 ? "it is" : "them is"} dropped.`);
  }
}

function current(tool) {
  const edit = state.edits.get(toolKey(tool));
  return {
    policy: edit?.policy ?? tool.policy ?? "POLICY_UNSPECIFIED",
    managerApproval: edit?.managerApproval ?? Boolean(tool.managerApproval),
  };
}

function edit(tool, change) {
  const key = toolKey(tool);
  const next = { ...current(tool), ...change };
  if (next.policy !== "POLICY_APPROVAL_NEEDED") next.managerApproval = false;
  const same = next.policy === tool.policy && next.managerApproval === Boolean(tool.managerApproval);
  if (same) state.edits.delete(key);
  else state.edits.set(key, next);
  if (state.edits.size === 0) state.editBase = null;
  else if (state.editBase == null) state.editBase = state.revision;
  renderTools();
}

function renderTools() {
  const byIntegration = new Map();
  for (const tool of [...state.tools.values()].sort((a, b) => toolKey(a).localeCompare(toolKey(b)))) {
    if (!byIntegration.has(tool.integrationId)) byIntegration.set(tool.integrationId, []);
    byIntegration.get(tool.integrationId).push(tool);
  }
  const sections = [...byIntegration].map(([integration, tools]) =>
    el("section", { "aria-label": `Integration ${integration}` },
      el("h2", {}, integration),
      el("table", {},
        el("thead", {}, el("tr", {}, el("th", {}, "Tool"), el("th", {}, "Policy"), el("th", {}, "Manager approval"), el("th", {}, "Seeded from"))),
        el("tbody", {}, tools.map(toolRow)))));
  $("integrations").replaceChildren(...sections);
  $("unsaved").textContent = state.edits.size ? `${state.edits.size} unsaved change(s)` : "";
  $("save").disabled = state.edits.size === 0;
}

function toolRow(tool) {
  const key = toolKey(tool);
  const { policy, managerApproval } = current(tool);
  const select = el("select", {
    "data-tool": key, "aria-label": `Policy of ${key}`,
    onchange: (e) => edit(tool, { policy: e.target.value }),
  }, POLICIES.map((p) => el("option", { value: p, selected: p === policy }, POLICY_NAMES[p])));
  const manager = el("input", {
    type: "checkbox", "data-manager": key, "aria-label": `Manager approval for ${key}`,
    checked: managerApproval, disabled: policy !== "POLICY_APPROVAL_NEEDED",
    onchange: (e) => edit(tool, { managerApproval: e.target.checked }),
  });
  return el("tr", { class: state.edits.has(key) ? "edited" : null, "data-row": key },
    el("td", { title: tool.description || "" }, el("code", {}, tool.name)),
    el("td", {}, select),
    el("td", {}, manager),
    el("td", { class: "reason" }, `${SOURCE_NAMES[tool.source] || ""}${tool.sourceReason ? `: ${tool.sourceReason}` : ""}`));
}

async function save() {
  const changes = [...state.edits].map(([key, e]) => {
    const tool = state.tools.get(key);
    return { integrationId: tool.integrationId, toolName: tool.name, policy: e.policy, managerApproval: e.managerApproval };
  });
  if (changes.length === 0) return;
  const base = state.editBase ?? state.revision;
  try {
    const answer = await api("SetPolicy", { changes, expectedRevision: base, comment: $("save-comment").value });
    state.edits.clear();
    state.editBase = null;
    $("save-comment").value = "";
    await loadTools();
    say(`Saved revision ${answer.revision}.`);
  } catch (e) {
    if (e.code === "FAILED_PRECONDITION" && /revision/.test(e.detail)) {
      await conflict(base);
    } else {
      complain(e);
    }
  }
}

// Someone else saved since the edits began: say who and what, keep the edits on top of
// the tools as they are now, and let the person Save again.
async function conflict(base) {
  let theirs = [];
  try {
    const page = await api("ListRevisions", { pageSize: 20 });
    theirs = (page.revisions || []).filter((r) => BigInt(r.revision) > BigInt(base));
  } catch (e) { /* the message below still says what happened */ }
  await loadTools();
  state.editBase = state.edits.size ? state.revision : null;
  renderTools();
  const lines = theirs.reverse().map((r) =>
    `revision ${r.revision} by ${r.actorName || r.actorKeyId || "someone"}${r.comment ? ` (“${r.comment}”)` : ""}: ` +
    (r.diffs || []).map(diffText).join("; "));
  complain(`Someone else saved since you began editing (you had revision ${base}; it is now ${state.revision}).\n` +
    `${lines.join("\n")}\nYour changes are kept on top of theirs: check them and Save again.`);
}

function diffText(d) {
  const policy = (p) => POLICY_NAMES[p || "POLICY_UNSPECIFIED"];
  const manager = (m) => (m ? " +manager" : "");
  return `${d.integrationId}/${d.toolName}: ${policy(d.policyBefore)}${manager(d.managerApprovalBefore)} → ${policy(d.policyAfter)}${manager(d.managerApprovalAfter)}`;
}

// Live updates: every saved revision reaches the page while it is open; a broken stream is
// resumed from the revision shown.
async function watchConfig(signal) {
  while (!signal.aborted) {
    try {
      await stream("WatchConfig", { sinceRevision: state.revision }, signal, (event) => {
        if (event.snapshot) {
          if (event.snapshot.reset) state.tools.clear();
          for (const t of event.snapshot.tools || []) state.tools.set(toolKey(t), t);
        } else if (event.change) {
          for (const t of event.change.upserted || []) state.tools.set(toolKey(t), t);
          for (const r of event.change.removed || []) state.tools.delete(`${r.integrationId}/${r.toolName}`);
        }
        if (event.revision && BigInt(event.revision) > BigInt(state.revision) && !event.heartbeat) {
          state.revision = event.revision;
          dropEditsOfRemovedTools();
          renderTools();
        }
        $("live").textContent = `Live: revision ${state.revision}`;
      });
    } catch (e) {
      if (signal.aborted) return;
      $("live").textContent = `Reconnecting (${e.code || e})…`;
      await new Promise((resolve) => setTimeout(resolve, 1000));
    }
  }
}

// ---------------------------------------------------------------------------------------
// Approvals

async function loadApprovals() {
  const load = ++state.approvalsLoad;
  const page = await api("ListApprovals", { state: "APPROVAL_STATE_PENDING", pageSize: 100 });
  if (load !== state.approvalsLoad) return;
  const approvals = page.approvals || [];
  const cards = approvals.map(approvalCard);
  $("approvals").replaceChildren(...(cards.length ? cards : [el("p", {}, "Nothing waits for a decision.")]));
}

function approvalCard(a) {
  let args = a.argumentsJson || "";
  try { args = JSON.stringify(JSON.parse(args), null, 2); } catch (e) { /* shown as sent */ }
  const steps = (a.steps || []).map((s) => `${s.role === "APPROVER_ROLE_MANAGER" ? "manager" : "technician"} ${s.approverId}: ${s.approved ? "approved" : "denied"}`);
  const roles = (a.requiredRoles || []).filter((r) => !(a.steps || []).some((s) => s.role === r));
  const role = el("select", { "aria-label": `Role for approval ${a.id}`, "data-role": a.id },
    roles.map((r) => el("option", { value: r }, r === "APPROVER_ROLE_MANAGER" ? "as manager" : "as technician")));
  const decide = (approve) => async () => {
    const approverId = $("approver-id").value.trim();
    if (!approverId) { complain("Say who you are first: your person id in the directory."); $("approver-id").focus(); return; }
    sessionStorage.setItem(APPROVER, approverId);
    try {
      const answer = await api("SubmitApproval", {
        approvalId: a.id, role: role.value, approverId, approve, comment: $("approval-comment").value,
      });
      say(`Recorded: ${approve ? "approved" : "denied"} ${a.toolName} (${a.id}); it is now ${answer.approval.state.replace("APPROVAL_STATE_", "").toLowerCase()}.`);
      await loadApprovals();
    } catch (e) { complain(e); }
  };
  return el("article", { class: "card", "data-approval": a.id, "aria-label": `Approval ${a.id}` },
    el("h3", {}, `${a.integrationId} / ${a.toolName}`),
    el("p", {}, `Requested for ${a.requesterId} · expires ${when(a.expiresAt)} · ${a.id}`),
    steps.length ? el("p", {}, `So far: ${steps.join(", ")}`) : null,
    el("pre", {}, args),
    el("div", { class: "actions" }, role,
      el("button", { type: "button", "data-approve": a.id, onclick: decide(true) }, "Approve"),
      el("button", { type: "button", "data-deny": a.id, onclick: decide(false) }, "Deny")));
}

async function watchApprovals(signal) {
  while (!signal.aborted) {
    try {
      await stream("WatchApprovals", {}, signal, () => {
        if (!$("view-approvals").hidden) loadApprovals().catch(complain);
      });
    } catch (e) {
      if (signal.aborted) return;
      await new Promise((resolve) => setTimeout(resolve, 1000));
    }
  }
}

// ---------------------------------------------------------------------------------------
// History and rollback

async function loadRevisions(first) {
  if (first) { state.revisionsToken = ""; $("revisions").replaceChildren(); }
  const page = await api("ListRevisions", { pageSize: 20, pageToken: state.revisionsToken });
  state.revisionsToken = page.nextPageToken || "";
  $("more-revisions").hidden = !state.revisionsToken;
  const rows = (page.revisions || []).map(revisionRow);
  let table = $("revisions").querySelector("tbody");
  if (!table) {
    const t = el("table", {}, el("thead", {}, el("tr", {}, ["Revision", "Saved", "By", "Kind", "Why", "Changes", ""].map((h) => el("th", {}, h)))), el("tbody"));
    $("revisions").append(t);
    table = t.querySelector("tbody");
  }
  table.append(...rows);
}

function revisionRow(r) {
  const kind = (r.kind || "").replace("REVISION_KIND_", "").toLowerCase().replace("_", " ");
  const isCurrent = BigInt(r.revision) === BigInt(state.revision);
  const cell = el("td");
  if (!isCurrent) {
    const start = el("button", { type: "button", "data-rollback": r.revision }, `Roll back to ${r.revision}…`);
    start.addEventListener("click", () => {
      const confirm = el("button", { type: "button", "data-confirm-rollback": r.revision }, `Confirm: every tool as at revision ${r.revision}`);
      confirm.addEventListener("click", () => rollback(r.revision));
      cell.replaceChildren(confirm);
      confirm.focus();
    });
    cell.append(start);
  }
  return el("tr", { "data-revision": r.revision },
    el("td", {}, r.revision), el("td", {}, when(r.savedAt)),
    el("td", {}, `${r.actorName || r.actorKeyId || ""}${r.actorRole ? ` (${r.actorRole})` : ""}`),
    el("td", {}, kind), el("td", {}, r.comment || ""),
    el("td", {}, el("ul", { class: "diffs" }, (r.diffs || []).map((d) => el("li", {}, diffText(d))))),
    cell);
}

async function rollback(to) {
  try {
    const answer = await api("RollbackPolicies", { toRevision: to, expectedRevision: state.revision, comment: `rollback to ${to} from the console` });
    await loadTools();
    say(`Rolled back: revision ${answer.revision} gives every tool its policy of revision ${to}.`);
    await loadRevisions(true);
  } catch (e) { complain(e); }
}

// ---------------------------------------------------------------------------------------
// Failed deliveries

async function loadDeliveries() {
  const page = await api("ListDeliveries", { state: "DELIVERY_STATE_FAILED", pageSize: 100 });
  const rows = (page.deliveries || []).map((d) =>
    el("tr", { "data-delivery": d.id },
      el("td", {}, d.id), el("td", {}, d.channelId), el("td", {}, d.approvalId), el("td", {}, d.eventType),
      el("td", {}, String(d.attempts || 0)), el("td", {}, d.lastError || ""),
      el("td", {}, el("button", {
        type: "button", "data-retry": d.id,
        onclick: async () => {
          try { await api("RetryDelivery", { deliveryId: d.id }); say(`Delivery ${d.id} is queued again.`); await loadDeliveries(); } catch (e) { complain(e); }
        },
      }, "Retry"))));
  $("deliveries").replaceChildren(rows.length
    ? el("table", {}, el("thead", {}, el("tr", {}, ["Delivery", "Channel", "Approval", "Event", "Attempts", "Last error", ""].map((h) => el("th", {}, h)))), el("tbody", {}, rows))
    : el("p", {}, "No failed deliveries."));
}

// ---------------------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  $("sign-in").addEventListener("submit", (e) => {
    e.preventDefault();
    signIn($("key").value.trim()).catch(complain);
  });
  $("sign-out").addEventListener("click", signOut);
  $("save").addEventListener("click", () => save().catch(complain));
  $("more-revisions").addEventListener("click", () => loadRevisions(false).catch(complain));
  for (const view of ["policies", "approvals", "history", "deliveries"]) {
    $(`tab-${view}`).addEventListener("click", () => show(view));
  }
  if (state.key) signIn(state.key).catch(complain);
  else $("key").focus();
});
