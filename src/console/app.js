// The agent console: signs in, connects with the client library and renders
// the inbox. Plain ES module, no build step; served by the gateway.
import { connect } from "/console/switchboard.js";
import { Model, VIEWS } from "/console/model.js";

const $ = (id) => document.getElementById(id);
const base = location.pathname.replace(/\/+$/, "");           // …/console
const root = base.replace(/\/console$/, "");                    // the gateway's path prefix
const wsUrl = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}${root}/v1/ws`;

const model = new Model();
let client = null;
let current = "all";        // selected view
let open = null;            // open conversation id
let active = 0;             // index of the keyboard-active row
let activeId = null;        // …and its conversation, which it follows when the list reorders
let keyboardMoved = false;  // scroll the active row into view on the next render
let viewGen = 0;
const BANNER = { idle: "Not connected", connecting: "Connecting…", open: "Connected",
                 reconnecting: "Reconnecting…", offline: "Offline", closed: "Disconnected" };

// ------------------------------------------------------------------ sign-in

async function start() {
  const params = new URLSearchParams(location.search);
  const token = params.get("token");
  if (token) {
    history.replaceState(null, "", location.pathname); // keep the token out of the address bar
    return run(() => token);
  }
  let dev = null;
  try {
    const r = await fetch(`${base}/dev/users`);
    if (r.ok) dev = await r.json();
  } catch { /* no dev sign-in */ }
  if (dev) return devSignin(dev);
  hostToken();
}

function devSignin(dev) {
  $("signin").hidden = false;
  const wsSel = $("signin-workspace"), userSel = $("signin-user");
  const fill = (sel, items) => {
    sel.replaceChildren(...items.map(([v, label]) => new Option(label, v)));
  };
  const users = (d) => fill(userSel, d.users.map((u) => [u.id, `${u.id} (${u.role})`]));
  fill(wsSel, dev.workspaces.map((w) => [w, w]));
  if (dev.workspace) wsSel.value = dev.workspace;
  users(dev);
  const saved = sessionStorage.getItem("switchboard-console-user");
  if (saved) { const [w, u] = JSON.parse(saved); if (w === wsSel.value) userSel.value = u; }
  wsSel.addEventListener("change", async () => {
    const r = await fetch(`${base}/dev/users?workspace=${encodeURIComponent(wsSel.value)}`);
    users(await r.json());
  });
  $("signin-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const workspace = wsSel.value, user = userSel.value;
    const mint = async () => {
      const r = await fetch(`${base}/dev/token`, { method: "POST",
        headers: { "content-type": "application/json" }, body: JSON.stringify({ workspace, user }) });
      if (!r.ok) throw new Error((await r.json()).error?.message ?? r.statusText);
      return (await r.json()).token;
    };
    try {
      const first = await mint();
      let used = false;
      sessionStorage.setItem("switchboard-console-user", JSON.stringify([workspace, user]));
      $("signin").hidden = true;
      run(() => (used ? mint() : ((used = true), first)));
    } catch (err) {
      $("signin-error").textContent = `Sign-in failed: ${err.message}`;
    }
  });
  $("signout").addEventListener("click", () => {
    sessionStorage.removeItem("switchboard-console-user");
    location.reload();
  });
}

// Production: the host application gives the token with postMessage, and
// gets a request for a fresh one when the gateway wants it (expiry).
function hostToken() {
  $("waiting").hidden = false;
  let latest = null;
  const waiters = [];
  addEventListener("message", (e) => {
    if (e.source !== window.parent || e.source === window) return;
    if (e.data?.type !== "switchboard:token" || typeof e.data.token !== "string") return;
    const first = latest === null;
    latest = e.data.token;
    while (waiters.length) waiters.shift()(latest);
    if (first) { $("waiting").hidden = true; run(getToken); }
  });
  function getToken() {
    if (!client) return latest;
    window.parent.postMessage({ type: "switchboard:token-request" }, "*");
    return new Promise((resolve) => {
      waiters.push(resolve);
      setTimeout(() => resolve(latest), 5000);
    });
  }
  if (window.parent !== window) window.parent.postMessage({ type: "switchboard:token-request" }, "*");
}

// ------------------------------------------------------------------ connection

function run(getToken) {
  $("app").hidden = false;
  client = connect({ url: wsUrl, getToken, snapshot: true, presence: true });
  window.__console = { model, client };
  client.on("state", (s) => { banner(s); if (s === "open") refresh(); });
  banner(client.state);
  client.on("frame", (f) => {
    const viewsChanged = model.apply(f);
    if (f.type === "hello") {
      $("me").hidden = false;
      $("me").textContent = `${f.user} · ${f.workspace}`;
      $("signout").hidden = false;
    }
    if (f.type === "inbox") refresh();
    if (f.type === "message" && f.conversation === open && f.message?.sender?.id !== model.me) markRead(open);
    if (f.type === "access_revoked" && f.conversation === open) closeThread("You no longer have access to this conversation.");
    if (viewsChanged) refreshSoon();
    schedule();
  });
  setInterval(() => { if (model.typing.size) schedule(); }, 1000);
}

function banner(state) {
  const b = $("banner");
  b.dataset.state = state;
  b.textContent = BANNER[state] ?? state;
}

// View counts and the selected view's list come from the gateway: asked for
// again (at most every 400 ms, more seldom for large views) after frames that
// may change them.
let refreshTimer = null, lastRefresh = 0, refreshing = false, again = false;
function refreshSoon() {
  if (refreshTimer) return;
  // Large views are asked for less often (a 1,000-item view is ~0.5 MB of JSON).
  const every = 400 + (model.lists[current]?.length ?? 0);
  const wait = Math.max(0, every - (performance.now() - lastRefresh));
  refreshTimer = setTimeout(() => { refreshTimer = null; refresh(); }, wait);
}
async function refresh() {
  if (!client || client.state !== "open") return;
  if (refreshing) { again = true; return; }
  refreshing = true;
  lastRefresh = performance.now();
  const gen = ++viewGen;
  try {
    await Promise.all(VIEWS.filter(([v]) => v !== current).map(async ([v]) => {
      const p = await client.view(v, { limit: 1 });
      model.totals[v] = p.total;
    }));
    await loadView(current, gen);
  } catch (e) {
    if (e?.code !== "closed" && e?.code !== "timeout") console.warn("view refresh", e);
  } finally {
    refreshing = false;
    schedule();
    if (again) { again = false; refreshSoon(); }
  }
}
async function loadView(view, gen) {
  let cursor = 0, items = [], total = 0;
  for (;;) {
    const p = await client.view(view, { cursor, limit: 200 }); // pages small enough to parse within a frame
    items = items.concat(p.items);
    total = p.total;
    if (p.next_cursor == null || gen !== viewGen) break;
    cursor = p.next_cursor;
  }
  if (view === current) model.page(view, items, total);
}

// ------------------------------------------------------------------ actions

function select(view) {
  current = view;
  active = 0;
  activeId = null;
  schedule();
  refresh();
}

async function markRead(id) {
  const r = model.convs.get(id);
  if (!r || !client) return;
  const seq = Math.max(r.lastMessageSeq, r.last);
  if (r.unreadCount === 0 && r.readSeq >= seq) return;
  try { await client.read(id, seq); } catch (e) { showError(e); }
}

function openThread(id) {
  open = id;
  schedule();
  client.focus(id).catch(() => {});
  markRead(id);
}

function closeThread(msg) {
  open = null;
  $("action-error").textContent = msg ?? "";
  schedule();
}

function showError(e) {
  $("action-error").textContent = e ? `Refused: ${e.code ?? ""} ${e.message ?? e}` : "";
}

async function act(fn) {
  showError(null);
  try { await fn(); } catch (e) { showError(e); }
}

function wireActions() {
  $("act-assign").addEventListener("click", () => act(() => {
    const s = model.convs.get(open)?.state;
    return client.assign(open, s?.assignee === model.me ? null : model.me);
  }));
  $("act-close").addEventListener("click", () => act(() =>
    model.convs.get(open)?.state?.status === "closed" ? client.reopen(open) : client.close(open)));
  $("act-mute").addEventListener("click", () => act(() => client.mute(open, !model.convs.get(open)?.muted)));
  $("act-private").addEventListener("click", () => act(() =>
    client.setPrivate(open, !model.convs.get(open)?.state?.private)));
  const text = $("composer-text");
  const lastTyping = new Map(); // conversation → when "typing" was last sent (the gateway relays one per 2 s)
  text.addEventListener("input", () => {
    if (!open || !text.value) return;
    const now = performance.now();
    if (now - (lastTyping.get(open) ?? -Infinity) > 2000) { lastTyping.set(open, now); client.typing(open); }
  });
  text.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); $("composer").requestSubmit(); }
  });
  $("composer").addEventListener("submit", (e) => {
    e.preventDefault();
    const body = text.value.trim();
    if (!body || !open) return;
    const conv = open, clientId = crypto.randomUUID();
    text.value = "";
    model.pending(conv, clientId, body);
    schedule();
    client.send(conv, body, { clientId })
      .then((ack) => {
        model.acked(conv, clientId, ack);
        // Replying reads everything before it; the `marks` answer also brings
        // the current unread figures (a reply changes "awaiting my reply").
        return client.read(conv, ack.seq);
      })
      .catch((e) => { model.failed(conv, clientId); showError(e); })
      .finally(schedule);
  });
  // The conversation list is a listbox: arrows move, Enter (or a click) opens.
  const list = $("conversations");
  list.addEventListener("click", (e) => {
    const li = e.target.closest("li[data-conv]");
    if (!li) return;
    active = Number(li.dataset.index);
    activeId = li.dataset.conv;
    openThread(li.dataset.conv);
  });
  list.addEventListener("scroll", schedule, { passive: true });
  addEventListener("resize", schedule);
  list.addEventListener("keydown", (e) => {
    const ids = model.lists[current] ?? [];
    if (!ids.length) return;
    const moves = { ArrowDown: active + 1, ArrowUp: active - 1, Home: 0, End: ids.length - 1,
                    PageDown: active + 10, PageUp: active - 10 };
    if (e.key in moves) {
      e.preventDefault();
      active = Math.max(0, Math.min(ids.length - 1, moves[e.key]));
      activeId = ids[active];
      keyboardMoved = true;
      schedule();
    } else if (e.key === "Enter" || e.key === " ") {
      e.preventDefault();
      openThread(ids[active]);
      $("composer-text").focus();
    }
  });
}

// ------------------------------------------------------------------ rendering

let frame = 0;
function schedule() {
  if (!frame) frame = requestAnimationFrame(() => { frame = 0; render(); });
}

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text != null) e.textContent = text;
  return e;
}

function render() {
  renderViews();
  renderList();
  renderThread();
  const presence = [...model.online].sort();
  $("presence").replaceChildren(...presence.map((u) => el("li", null, u)));
  $("presence-title").hidden = presence.length === 0;
  $("totals").textContent = `${model.unread} unread · ${model.myUnread} awaiting my reply`;
}

function renderViews() {
  const ul = $("views");
  if (!ul.children.length) {
    for (const [v, label] of VIEWS) {
      const li = el("li");
      const b = el("button");
      b.type = "button";
      b.dataset.view = v;
      b.append(el("span", "label", label), el("span", "count"));
      b.addEventListener("click", () => select(v));
      li.append(b);
      ul.append(li);
    }
  }
  for (const b of ul.querySelectorAll("button")) {
    const v = b.dataset.view;
    const n = model.totals[v];
    b.querySelector(".count").textContent = n == null ? "" : String(n);
    b.setAttribute("aria-current", v === current ? "true" : "false");
    b.setAttribute("aria-label", `${VIEWS.find((x) => x[0] === v)[1]}${n == null ? "" : `, ${n} conversations`}`);
  }
  $("list-title").textContent = VIEWS.find((x) => x[0] === current)[1];
}

function title(r) {
  const s = r.state;
  if (!s) return r.id;
  if (s.kind === "direct" || s.kind === "group") return `${r.id} (${(s.participants ?? []).join(", ")})`;
  return s.contact ? `${r.id} · ${s.contact}` : r.id;
}

function lockIcon() {
  const lock = el("span", "lock");
  lock.setAttribute("role", "img");
  lock.setAttribute("aria-label", "private");
  lock.title = "Private conversation";
  return lock;
}

// Rows are kept per conversation and rebuilt only when what they show changed.
const rows = new Map();
function rowKey(r) {
  const s = r.state ?? {};
  return [title(r), r.preview, r.unreadCount, !!s.private, s.assignee ?? "", s.status ?? "", r.muted].join("\u0000");
}
function row(id) {
  const r = model.convs.get(id) ?? model.rec(id);
  const key = rowKey(r);
  let cached = rows.get(id);
  if (cached && cached.key === key) return cached.li;
  const s = r.state ?? {};
  const li = el("li", "conv");
  li.id = `conv-${CSS.escape(id)}`;
  li.dataset.conv = id;
  li.setAttribute("role", "option");
  const name = el("span", "name", title(r));
  const side = el("span", "side");
  if (s.private) {
    side.append(lockIcon());
  }
  if (r.muted) side.append(el("span", "muted", "muted"));
  if (s.status === "closed") side.append(el("span", "closed", "closed"));
  if (r.unreadCount > 0) {
    const badge = el("span", "badge", String(r.unreadCount));
    badge.setAttribute("aria-label", `${r.unreadCount} unread`);
    side.append(badge);
  }
  const preview = el("span", "preview", r.preview || (s.assignee ? `assigned to ${s.assignee}` : "unassigned"));
  li.append(name, side, preview);
  rows.set(id, { key, li });
  return li;
}

// The list is windowed: only the rows in view (and a few around) are in the
// DOM, positioned in a spacer as tall as the whole list, so a 1,000-conversation
// view costs what ~20 rows cost. Options carry aria-setsize/aria-posinset.
const ROW = 56, OVERSCAN = 6;
function renderList() {
  const ids = model.lists[current] ?? [];
  const list = $("conversations");
  const spacer = $("spacer");
  if (activeId != null && ids[active] !== activeId) {
    const i = ids.indexOf(activeId);
    if (i >= 0) active = i;
  }
  if (active >= ids.length) active = Math.max(0, ids.length - 1);
  activeId = ids[active] ?? null;
  if (keyboardMoved) {
    keyboardMoved = false;
    const top = active * ROW;
    if (top < list.scrollTop) list.scrollTop = top;
    else if (top + ROW > list.scrollTop + list.clientHeight) list.scrollTop = top + ROW - list.clientHeight;
  }
  spacer.style.height = `${ids.length * ROW}px`;
  const first = Math.max(0, Math.floor(list.scrollTop / ROW) - OVERSCAN);
  const last = Math.min(ids.length, Math.ceil((list.scrollTop + (list.clientHeight || 800)) / ROW) + OVERSCAN);
  const wanted = [];
  for (let i = first; i < last; i++) {
    const id = ids[i];
    const li = row(id);
    li.dataset.index = String(i);
    li.style.top = `${i * ROW}px`;
    li.setAttribute("aria-posinset", String(i + 1));
    li.setAttribute("aria-setsize", String(ids.length));
    li.setAttribute("aria-selected", i === active ? "true" : "false");
    li.classList.toggle("active", id === open);
    wanted.push(li);
  }
  // The active row stays in the DOM (aria-activedescendant points at it).
  if (ids.length && (active < first || active >= last)) {
    const li = row(ids[active]);
    li.dataset.index = String(active);
    li.style.top = `${active * ROW}px`;
    // Its place too: a burst can move it far from where it was last drawn.
    li.setAttribute("aria-posinset", String(active + 1));
    li.setAttribute("aria-setsize", String(ids.length));
    li.setAttribute("aria-selected", "true");
    li.classList.toggle("active", ids[active] === open);
    wanted.push(li);
  }
  const kids = spacer.children;
  let same = kids.length === wanted.length;
  for (let i = 0; same && i < wanted.length; i++) same = kids[i] === wanted[i];
  if (!same) spacer.replaceChildren(...wanted);
  if (rows.size > 4 * (ids.length + 50)) for (const id of rows.keys()) if (!model.convs.has(id)) rows.delete(id);
  $("empty").hidden = ids.length > 0;
  if (ids.length) list.setAttribute("aria-activedescendant", row(ids[active]).id);
  else list.removeAttribute("aria-activedescendant");
}

function renderThread() {
  const r = open && model.convs.get(open);
  $("actions").hidden = !r;
  $("composer").hidden = !r;
  if (!r) {
    $("thread-title").textContent = "No conversation open";
    $("thread-meta").textContent = "";
    $("messages").replaceChildren();
    $("typing").textContent = "";
    return;
  }
  const s = r.state ?? {};
  $("thread-title").replaceChildren(...(s.private ? [lockIcon(), " "] : []), title(r));
  $("thread-meta").textContent = [
    s.status === "closed" ? "closed" : "open",
    s.assignee ? `assigned to ${s.assignee}` : "unassigned",
    s.team ? `team ${s.team}` : null,
    s.private ? "private" : null,
    r.muted ? "muted" : null,
    r.access === "read" ? "read only" : null,
  ].filter(Boolean).join(" · ");
  $("act-assign").textContent = s.assignee === model.me ? "Unassign" : "Assign to me";
  $("act-close").textContent = s.status === "closed" ? "Reopen" : "Close";
  $("act-mute").textContent = r.muted ? "Unmute" : "Mute";
  $("act-private").textContent = s.private ? "Make public" : "Make private";
  for (const b of $("actions").querySelectorAll("button")) b.disabled = r.access !== "write";
  for (const c of $("composer").elements) c.disabled = r.access !== "write";
  const b = $("act-mute"); b.disabled = false; b.setAttribute("aria-pressed", String(!!r.muted));
  const msgs = model.thread(open);
  const ol = $("messages");
  const atEnd = ol.scrollTop + ol.clientHeight >= ol.scrollHeight - 20;
  ol.replaceChildren(...msgs.map((m) => {
    const mine = m.sender?.kind === "user" && m.sender.id === model.me;
    const li = el("li", mine ? "msg mine" : "msg");
    li.dataset.seq = m.seq ?? "";
    const who = el("div", "who", `${mine ? "You" : m.sender?.id ?? "?"}${m.sender?.kind === "contact" ? " (customer)" : ""} · ${new Date(m.ts).toLocaleTimeString()}`);
    if (m.status) {
      const tick = el("span", `tick ${m.status}`, { sending: "sending…", sent: "✓ sent", failed: "✗ not sent" }[m.status]);
      tick.setAttribute("aria-label", m.status);
      who.append(tick);
    }
    li.append(who, el("div", "body", m.deleted ? "(deleted)" : m.body));
    return li;
  }));
  if (atEnd) ol.scrollTop = ol.scrollHeight;
  const t = model.typing.get(open);
  $("typing").textContent = t && t.until > Date.now() ? `${t.user} is typing…` : "";
}

wireActions();
start();
