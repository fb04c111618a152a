/**
 * Switchboard client: the agent WebSocket of docs/protocol.md for browsers and Node >= 20.
 *
 * - `connect()` keeps one live connection: reconnect with exponential backoff and full
 *   jitter, `?resume=` with the last `seq` seen per conversation (a frame whose `seq` was
 *   already seen is dropped, so the application never sees a duplicate), `replay_gap`
 *   surfaced as an event, close codes handled as the protocol says (1008 stops; 4008 and
 *   1001 reconnect at once; 4003 asks `getToken` again), the token renewed before `exp`
 *   (make-before-break: the new connection takes over, then the old one is closed), and a
 *   connection silent for `idle_timeout_secs` treated as dead.
 * - Typed events for every server frame; typed commands returning promises matched by
 *   `ref`, with timeouts, rejected with `SwitchboardError` carrying the server's code.
 * - `Inbox`: an inbox model (views, unread, my-unread, live messages) kept current from
 *   the frames, so a UI only renders it.
 *
 * One self-contained ES module with no dependencies: the agent console serves this very
 * file (dist/index.js) as `/console/switchboard.js`.
 */
export const VIEW_NAMES = [
    "assigned_to_me",
    "unassigned",
    "my_unassigned",
    "waitlist",
    "new",
    "all",
    "closed",
    "archived",
];
/** A refused command: `code` is the server's error code, or "timeout" / "closed". */
export class SwitchboardError extends Error {
    constructor(code, message, ref, field) {
        super(message);
        this.name = "SwitchboardError";
        this.code = code;
        if (ref !== undefined)
            this.ref = ref;
        if (field !== undefined)
            this.field = field;
    }
}
// ------------------------------------------------------------------ helpers
/** Decodes a JWT's payload without verifying it (the client only reads `exp`/`iat`). */
export function decodeJwtPayload(token) {
    const part = token.split(".")[1];
    if (!part)
        return null;
    try {
        let b64 = part.replace(/-/g, "+").replace(/_/g, "/");
        while (b64.length % 4)
            b64 += "=";
        const bin = atob(b64);
        const bytes = new Uint8Array(bin.length);
        for (let i = 0; i < bin.length; i++)
            bytes[i] = bin.charCodeAt(i);
        const v = JSON.parse(new TextDecoder().decode(bytes));
        return v && typeof v === "object" ? v : null;
    }
    catch {
        return null;
    }
}
function expOf(token) {
    const exp = decodeJwtPayload(token)?.exp;
    return typeof exp === "number" ? exp : -Infinity;
}
/** Full-jitter exponential backoff: uniform in [0, min(max, initial·2^attempt)). */
export function backoffDelay(attempt, initialMs, maxMs, random = Math.random) {
    const cap = Math.min(maxMs, initialMs * Math.pow(2, Math.min(attempt, 30)));
    return Math.floor(random() * cap);
}
let idCounter = 0;
function randomId() {
    const c = globalThis.crypto;
    if (c && typeof c.randomUUID === "function")
        return c.randomUUID();
    idCounter += 1;
    return `c${Date.now().toString(36)}${Math.random().toString(36).slice(2)}${idCounter}`;
}
/** Frames that carry a conversation's `seq` and advance its position. */
const SEQUENCED = new Set(["message", "status", "message_updated", "message_deleted", "message_status"]);
/** Frames that answer a command. */
const REPLIES = new Set(["ack", "ok", "view", "bulk_result", "pong"]);
/** Above this length the resume positions go in a `resume` command instead of the URL. */
const MAX_RESUME_IN_URL = 48 * 1024;
/** One WebSocket and its timers. */
class Conn {
    constructor(ws) {
        this.hello = null;
        this.lastRx = Date.now();
        this.lastTx = Date.now();
        this.idleTimer = null;
        this.helloTimer = null;
        this.closed = false;
        this.ws = ws;
    }
}
class ClientImpl {
    constructor(opts) {
        this.handlers = new Map();
        this._state = "connecting";
        this._hello = null;
        this.pos = new Map();
        this.pending = new Map();
        this.queue = []; // refs waiting for an open connection
        this.refN = 0;
        this.conn = null; // the current connection
        this.old = null; // a connection being replaced (token renewal)
        this.token = null;
        this.tokenStale = true;
        this.attempt = 0;
        this.failures = 0;
        this.reconnectTimer = null;
        this.refreshTimer = null;
        this.stopped = false;
        this.connecting = false;
        this.onlineListener = null;
        this.typingSent = new Map();
        this.opts = opts;
        const WS = opts.WebSocket ?? globalThis.WebSocket;
        if (!WS)
            throw new Error("no WebSocket: pass opts.WebSocket (Node 20 needs --experimental-websocket)");
        this.WS = WS;
        const g = globalThis;
        if (typeof g.addEventListener === "function") {
            this.onlineListener = () => {
                if (!this.stopped && (this._state === "offline" || this._state === "reconnecting") && !this.connecting) {
                    this.attempt = 0;
                    this.schedule(0);
                }
            };
            g.addEventListener("online", this.onlineListener);
        }
        void this.open(false);
    }
    get state() {
        return this._state;
    }
    get hello() {
        return this._hello;
    }
    get snapshot() {
        return !!this.opts.snapshot;
    }
    on(event, handler) {
        let set = this.handlers.get(event);
        if (!set)
            this.handlers.set(event, (set = new Set()));
        set.add(handler);
        return () => {
            set.delete(handler);
        };
    }
    emit(event, value) {
        const set = this.handlers.get(event);
        if (!set)
            return;
        for (const h of [...set]) {
            try {
                h(value);
            }
            catch (e) {
                // An application handler's bug must not break the connection.
                setTimeout(() => {
                    throw e;
                });
            }
        }
    }
    setState(s) {
        if (this._state === s)
            return;
        this._state = s;
        this.emit("state", s);
    }
    positions() {
        return Object.fromEntries(this.pos);
    }
    // -------------------------------------------------------------- connecting
    async open(replacing) {
        if (this.stopped || this.connecting)
            return;
        this.connecting = true;
        let token;
        try {
            if (this.tokenStale || !this.token || this.expiresWithin(2)) {
                const previous = this.token;
                const next = await this.opts.getToken();
                if (replacing && previous && !(expOf(next) > expOf(previous))) {
                    // A renewal that got no later expiry (a cached token): keep the current connection
                    // and ask again later; at worst the server closes with 4003 and we reconnect.
                    this.connecting = false;
                    if (!this.stopped && this.conn && this.conn.hello && !this.conn.closed)
                        this.retryRenewal();
                    return;
                }
                this.token = next;
                this.tokenStale = false;
            }
            token = this.token;
        }
        catch (e) {
            this.connecting = false;
            if (this.stopped)
                return;
            if (replacing && this.conn && this.conn.hello && !this.conn.closed)
                this.retryRenewal();
            else
                this.failed();
            return;
        }
        if (this.stopped) {
            this.connecting = false;
            return;
        }
        const params = new URLSearchParams();
        params.set("token", token);
        if (this.opts.snapshot)
            params.set("snapshot", "true");
        if (this.opts.presence)
            params.set("presence", "true");
        let resumeCommand = null;
        if (this.pos.size > 0) {
            const resume = JSON.stringify(this.positions());
            if (resume.length <= MAX_RESUME_IN_URL)
                params.set("resume", resume);
            else
                resumeCommand = this.positions();
        }
        const sep = this.opts.url.includes("?") ? "&" : "?";
        let ws;
        try {
            ws = new this.WS(`${this.opts.url}${sep}${params.toString()}`);
        }
        catch (e) {
            this.connecting = false;
            if (replacing && this.conn && this.conn.hello && !this.conn.closed)
                this.retryRenewal();
            else
                this.failed();
            return;
        }
        const conn = new Conn(ws);
        if (replacing && this.conn && this.conn.hello) {
            this.old = this.conn;
        }
        else if (this.conn) {
            this.drop(this.conn, 1000, "replaced");
        }
        this.conn = conn;
        conn.helloTimer = setTimeout(() => {
            conn.helloTimer = null;
            if (conn.closed || conn.hello)
                return;
            this.drop(conn, 1000, "no hello in time");
            this.onClose(conn, 1006, "no hello in time");
        }, this.opts.connectTimeoutMs ?? 10000);
        ws.onmessage = (ev) => {
            if (conn.closed)
                return;
            conn.lastRx = Date.now();
            if (typeof ev.data !== "string")
                return;
            let frame;
            try {
                frame = JSON.parse(ev.data);
            }
            catch {
                return;
            }
            if (frame.type === "hello") {
                if (conn.helloTimer)
                    clearTimeout(conn.helloTimer);
                conn.helloTimer = null;
                this.connecting = false;
                conn.hello = frame;
                this._hello = frame;
                this.dispatch(conn, frame);
                this.onHello(conn, frame, resumeCommand);
                return;
            }
            this.dispatch(conn, frame);
        };
        ws.onclose = (ev) => this.onClose(conn, ev.code, ev.reason || "");
        ws.onerror = () => {
            /* a close event follows */
        };
    }
    expiresWithin(secs) {
        const exp = this.token ? decodeJwtPayload(this.token)?.exp : undefined;
        return typeof exp === "number" && exp * 1000 - Date.now() < secs * 1000;
    }
    onHello(conn, hello, resumeCommand) {
        this._hello = hello;
        this.attempt = 0;
        this.failures = 0;
        if (this.old) {
            const old = this.old;
            this.old = null;
            this.retire(old);
        }
        if (resumeCommand) {
            this.raw(conn, { type: "resume", positions: resumeCommand });
        }
        this.watchIdle(conn, hello);
        this.scheduleRefresh();
        this.setState("open");
        // Commands made while not connected, and retriable ones in flight on a lost connection.
        const queued = this.queue;
        this.queue = [];
        for (const ref of queued) {
            const p = this.pending.get(ref);
            if (p)
                this.transmit(ref, p);
        }
    }
    /** Application pings when nothing was received for `heartbeat_secs` (a browser cannot see
     * WebSocket pings); nothing received for `idle_timeout_secs` means the connection is dead. */
    watchIdle(conn, hello) {
        const idleMs = Math.max(1, hello.idle_timeout_secs || 60) * 1000;
        const beatMs = Math.max(1, Math.min(hello.heartbeat_secs || 25, idleMs / 2000)) * 1000;
        const tick = Math.max(250, Math.min(beatMs, idleMs) / 4);
        conn.idleTimer = setInterval(() => {
            if (conn.closed)
                return;
            const now = Date.now();
            if (now - conn.lastRx >= idleMs) {
                this.drop(conn, 4000, "idle: nothing received");
                this.onClose(conn, 4000, "idle: nothing received");
                return;
            }
            if (now - conn.lastRx >= beatMs && now - conn.lastTx >= beatMs) {
                this.raw(conn, { type: "ping" });
            }
        }, tick);
    }
    scheduleRefresh() {
        if (this.refreshTimer)
            clearTimeout(this.refreshTimer);
        this.refreshTimer = null;
        const margin = this.opts.refreshBeforeExpSecs;
        if (margin === false || !this.token)
            return;
        const claims = decodeJwtPayload(this.token);
        const exp = claims?.exp;
        if (typeof exp !== "number")
            return;
        const iat = typeof claims?.iat === "number" ? claims.iat : Date.now() / 1000;
        const lifetime = Math.max(0, exp - iat);
        const before = margin ?? Math.min(60, Math.max(2, lifetime / 10));
        const at = exp * 1000 - before * 1000;
        const delay = Math.max(0, Math.min(at - Date.now(), 2 ** 31 - 1));
        this.refreshTimer = setTimeout(() => {
            this.refreshTimer = null;
            if (this.stopped || this._state !== "open")
                return;
            this.tokenStale = true;
            void this.open(true);
        }, delay);
    }
    /** The renewal failed (getToken threw, or the new connection did not reach `hello`): the
     * current connection stays; try again after a backoff delay. */
    retryRenewal() {
        this.tokenStale = true;
        if (this.refreshTimer)
            clearTimeout(this.refreshTimer);
        this.refreshTimer = setTimeout(() => {
            this.refreshTimer = null;
            if (!this.stopped && this._state === "open")
                void this.open(true);
        }, this.delay());
    }
    /** Closes a replaced connection once its commands are answered (at most 2 s). */
    retire(conn) {
        const started = Date.now();
        const check = () => {
            if (conn.closed)
                return;
            const busy = [...this.pending.values()].some((p) => p.conn === conn);
            if (!busy || Date.now() - started > 2000)
                this.drop(conn, 1000, "token renewed");
            else
                setTimeout(check, 50);
        };
        check();
    }
    drop(conn, code, reason) {
        if (conn.closed)
            return;
        conn.closed = true;
        if (conn.idleTimer)
            clearInterval(conn.idleTimer);
        if (conn.helloTimer)
            clearTimeout(conn.helloTimer);
        conn.idleTimer = conn.helloTimer = null;
        conn.ws.onmessage = null;
        conn.ws.onclose = null;
        try {
            conn.ws.close(code === 4000 ? 4000 : 1000, reason);
        }
        catch {
            try {
                conn.ws.close();
            }
            catch {
                /* already closed */
            }
        }
        this.orphan(conn);
    }
    /** Commands in flight on a lost connection: retried on the next one when safe, else rejected. */
    orphan(conn) {
        for (const [ref, p] of this.pending) {
            if (p.conn !== conn)
                continue;
            p.conn = null;
            if (p.retry && !this.stopped) {
                this.queue.push(ref);
            }
            else {
                this.settle(ref);
                p.reject(new SwitchboardError("closed", "the connection closed before the reply", ref));
            }
        }
    }
    onClose(conn, code, reason) {
        const wasHello = conn.hello !== null;
        if (!conn.closed) {
            conn.closed = true;
            if (conn.idleTimer)
                clearInterval(conn.idleTimer);
            if (conn.helloTimer)
                clearTimeout(conn.helloTimer);
            conn.idleTimer = conn.helloTimer = null;
            this.orphan(conn);
        }
        if (conn === this.old) {
            this.old = null;
            if (code === 1008 && !this.stopped) {
                this.emit("disconnect", { code, reason, willReconnect: false });
                this.stop("closed", `closed by the server: 1008 ${reason}`);
            }
            return;
        }
        if (conn !== this.conn)
            return;
        this.conn = null;
        this.connecting = false;
        if (this.stopped)
            return;
        if (code === 1008) {
            this.emit("disconnect", { code, reason, willReconnect: false });
            this.stop("closed", `closed by the server: 1008 ${reason}`);
            return;
        }
        if (!wasHello && this.old && !this.old.closed) {
            // A token renewal whose new connection failed: keep the old one, try again later.
            this.conn = this.old;
            this.old = null;
            this.retryRenewal();
            return;
        }
        this.emit("disconnect", { code, reason, willReconnect: true });
        if (!wasHello) {
            // Refused before hello (a 401 is invisible to a browser): a new token next time.
            this.tokenStale = true;
            this.failed();
            return;
        }
        if (this.refreshTimer)
            clearTimeout(this.refreshTimer);
        this.refreshTimer = null;
        this.setState("reconnecting");
        if (code === 4003) {
            this.tokenStale = true;
            this.schedule(0);
        }
        else if (code === 4008 || code === 1001 || code === 4000) {
            this.schedule(0);
        }
        else {
            this.schedule(this.delay());
        }
    }
    delay() {
        const b = this.opts.backoff ?? {};
        const d = backoffDelay(this.attempt, b.initialMs ?? 500, b.maxMs ?? 30000);
        this.attempt += 1;
        return d;
    }
    failed() {
        if (this.stopped)
            return;
        this.failures += 1;
        const offlineAfter = this.opts.offlineAfterAttempts ?? 3;
        const nav = globalThis.navigator;
        if (this.failures >= offlineAfter || (nav && nav.onLine === false))
            this.setState("offline");
        else if (this._state !== "connecting")
            this.setState("reconnecting");
        this.schedule(this.delay());
    }
    schedule(ms) {
        if (this.reconnectTimer)
            clearTimeout(this.reconnectTimer);
        this.reconnectTimer = setTimeout(() => {
            this.reconnectTimer = null;
            void this.open(false);
        }, ms);
    }
    stop(state, why) {
        this.stopped = true;
        if (this.reconnectTimer)
            clearTimeout(this.reconnectTimer);
        if (this.refreshTimer)
            clearTimeout(this.refreshTimer);
        this.reconnectTimer = this.refreshTimer = null;
        for (const c of [this.conn, this.old])
            if (c)
                this.drop(c, 1000, "client closed");
        this.conn = this.old = null;
        for (const [ref, p] of [...this.pending]) {
            this.settle(ref);
            p.reject(new SwitchboardError("closed", why, ref));
        }
        this.queue = [];
        const g = globalThis;
        if (this.onlineListener && typeof g.removeEventListener === "function") {
            g.removeEventListener("online", this.onlineListener);
        }
        this.setState(state);
    }
    disconnect() {
        if (this.stopped)
            return;
        this.stop("closed", "disconnected by the application");
    }
    // -------------------------------------------------------------- frames
    dispatch(conn, frame) {
        if (conn !== this.conn && conn !== this.old)
            return;
        const t = frame.type;
        if (SEQUENCED.has(t)) {
            const f = frame;
            const have = this.pos.get(f.conversation);
            if (have !== undefined && f.seq <= have)
                return; // already seen (replay overlap, renewal)
            this.pos.set(f.conversation, f.seq);
        }
        else if (t === "access_granted") {
            const f = frame;
            const have = this.pos.get(f.conversation);
            if (have === undefined || f.seq > have)
                this.pos.set(f.conversation, f.seq);
        }
        else if (t === "access_revoked") {
            this.pos.delete(frame.conversation);
        }
        else if (t === "inbox") {
            // Conversations never seen get their position from the snapshot, so a later resume
            // covers them too (a conversation already tracked keeps its own: the replay follows).
            for (const page of Object.values(frame.views))
                this.learn(page);
        }
        else if (t === "view") {
            this.learn(frame);
        }
        this.emit("frame", frame);
        if (REPLIES.has(t) || t === "error") {
            const ref = frame.ref;
            const p = ref != null ? this.pending.get(ref) : undefined;
            if (p && ref != null) {
                this.settle(ref);
                if (t === "error") {
                    const e = frame;
                    p.reject(new SwitchboardError(e.code, e.message, ref, e.field));
                }
                else
                    p.resolve(frame);
                return;
            }
            if (t === "error")
                this.emit("error", frame);
            return;
        }
        switch (t) {
            case "hello":
                this.emit("hello", frame);
                break;
            case "replay_gap": {
                const f = frame;
                this.emit("replay_gap", {
                    ...f,
                    missing: { conversation: f.conversation, firstSeq: f.from_seq, lastSeq: f.oldest_seq - 1 },
                });
                break;
            }
            default:
                this.emit(t, frame);
        }
    }
    learn(page) {
        if (!page || !Array.isArray(page.items))
            return;
        for (const item of page.items) {
            const id = item.conversation?.id;
            if (typeof id === "string" && !this.pos.has(id) && typeof item.seq === "number")
                this.pos.set(id, item.seq);
        }
    }
    // -------------------------------------------------------------- commands
    raw(conn, frame) {
        if (conn.closed || conn.ws.readyState !== 1)
            return false;
        try {
            conn.ws.send(JSON.stringify(frame));
            conn.lastTx = Date.now();
            return true;
        }
        catch {
            return false;
        }
    }
    settle(ref) {
        const p = this.pending.get(ref);
        if (!p)
            return;
        clearTimeout(p.timer);
        this.pending.delete(ref);
        const i = this.queue.indexOf(ref);
        if (i >= 0)
            this.queue.splice(i, 1);
    }
    transmit(ref, p) {
        const conn = this.conn;
        if (conn && conn.hello && this.raw(conn, p.frame))
            p.conn = conn;
        else if (!this.queue.includes(ref))
            this.queue.push(ref);
    }
    command(frame, retry = false) {
        if (this.stopped)
            return Promise.reject(new SwitchboardError("closed", "the client is disconnected"));
        this.refN += 1;
        const ref = `r${this.refN}`;
        const full = { ...frame, ref };
        return new Promise((resolve, reject) => {
            const ms = this.opts.commandTimeoutMs ?? 10000;
            const timer = setTimeout(() => {
                if (!this.pending.has(ref))
                    return;
                this.settle(ref);
                reject(new SwitchboardError("timeout", `no reply to ${String(frame.type)} within ${ms} ms`, ref));
            }, ms);
            const p = {
                frame: full,
                resolve: resolve,
                reject,
                timer,
                conn: null,
                retry,
            };
            this.pending.set(ref, p);
            this.transmit(ref, p);
        });
    }
    async ok(frame, retry = false) {
        await this.command(frame, retry);
    }
    async send(conversation, body, opts = {}) {
        const clientId = opts.clientId ?? randomId();
        const frame = { type: "send", conversation, body, client_id: clientId };
        if (opts.mentions && opts.mentions.length)
            frame.mentions = opts.mentions;
        if (opts.note)
            frame.note = true;
        if (opts.attachments && opts.attachments.length)
            frame.attachments = opts.attachments;
        const a = await this.command(frame, true);
        return { messageId: a.message_id, seq: a.seq, duplicate: a.duplicate, clientId };
    }
    assign(conversation, assignee) {
        return this.ok({ type: "assign", conversation, assignee });
    }
    addCollaborator(conversation, user) {
        return this.ok({ type: "add_collaborator", conversation, user });
    }
    removeCollaborator(conversation, user) {
        return this.ok({ type: "remove_collaborator", conversation, user });
    }
    close(conversation) {
        return this.ok({ type: "close", conversation });
    }
    reopen(conversation) {
        return this.ok({ type: "reopen", conversation });
    }
    setPrivate(conversation, value) {
        return this.ok({ type: "set_private", conversation, private: value });
    }
    read(conversation, seq) {
        return this.ok({ type: "read", conversation, seq }, true);
    }
    mute(conversation, on = true) {
        return this.ok({ type: "mute", conversation, on }, true);
    }
    hide(conversation, on = true) {
        return this.ok({ type: "hide", conversation, on }, true);
    }
    archive(conversation, on = true) {
        return this.ok({ type: "archive", conversation, on }, true);
    }
    typing(conversation) {
        // The gateway relays at most one per 2 s and conversation: send no more than that.
        const now = Date.now();
        if (now - (this.typingSent.get(conversation) ?? -Infinity) < 2000)
            return;
        const conn = this.conn;
        if (conn && conn.hello && this.raw(conn, { type: "typing", conversation })) {
            this.typingSent.set(conversation, now);
            if (this.typingSent.size > 1000)
                this.typingSent.clear();
        }
    }
    focus(conversation) {
        return this.ok({ type: "focus", conversation }, true);
    }
    editMessage(conversation, messageId, body) {
        return this.ok({ type: "edit_message", conversation, message_id: messageId, body });
    }
    deleteMessage(conversation, messageId) {
        return this.ok({ type: "delete_message", conversation, message_id: messageId });
    }
    async createConversation(kind, participants) {
        const f = await this.command({ type: "create_conversation", kind, participants });
        return { conversation: String(f.conversation), seq: Number(f.seq) };
    }
    async startCustomerConversation(opts) {
        const frame = {
            type: "create_conversation",
            kind: "customer",
            channel: opts.channel,
            contact: opts.contact,
            body: opts.body,
            client_id: opts.clientId ?? randomId(),
        };
        if (opts.thread !== undefined)
            frame.thread = opts.thread;
        if (opts.private)
            frame.private = true;
        if (opts.attachments && opts.attachments.length)
            frame.attachments = opts.attachments;
        // Not retried after a reconnect: without a thread a retry would open a second conversation.
        const f = await this.command(frame);
        return { conversation: String(f.conversation), seq: Number(f.seq) };
    }
    async view(view, opts = {}) {
        const frame = { type: "view", view };
        if (opts.filter)
            frame.filter = opts.filter;
        if (opts.cursor !== undefined)
            frame.cursor = opts.cursor;
        if (opts.limit !== undefined)
            frame.limit = opts.limit;
        const f = await this.command(frame, true);
        return { view: f.view, items: f.items, total: f.total, next_cursor: f.next_cursor };
    }
    async bulk(action, conversations, assignee) {
        const frame = { type: "bulk", action, conversations };
        if (assignee !== undefined)
            frame.assignee = assignee;
        const f = await this.command(frame);
        return f.results;
    }
    async ping() {
        await this.command({ type: "ping" }, true);
    }
}
/** Opens a client; it connects at once and keeps reconnecting until `disconnect()` or 1008. */
export function connect(opts) {
    return new ClientImpl(opts);
}
const MESSAGES_KEPT = 1000;
const TYPING_MS = 4000;
/**
 * The inbox model: views, unread figures and live messages kept current from the frames.
 *
 * The server's `inbox` snapshot (or, without `snapshot`, one `view` page per view after each
 * `hello`) is the truth; between two, membership follows `status` / `access_granted`
 * (`conversation_state`), `marks` and `message` frames with the rules of docs/protocol.md
 * ("Inbox"). Views that depend on facts a client does not see (`my_unassigned`: the
 * contact's owner; `new`: whether the contact is known; `waitlist` of a team not seen yet)
 * are asked again with `view` (debounced) when a change may have put a conversation in
 * them.
 */
export class Inbox {
    constructor(client) {
        this.conversations = new Map();
        this.views = Object.fromEntries(VIEW_NAMES.map((v) => [v, []]));
        /** Conversations per view: the server's `total`, adjusted by the changes seen since. */
        this.counts = Object.fromEntries(VIEW_NAMES.map((v) => [v, 0]));
        this.unread = 0;
        this.myUnread = 0;
        /** Users online (with `presence: true`). */
        this.online = new Set();
        this.me = null;
        this.teams = new Set();
        this.msgs = new Map();
        this.typingUntil = new Map();
        this.handlers = new Set();
        this.changed = false;
        this.resyncViews = new Set();
        this.resyncTimer = null;
        this.off = [];
        this.fullGen = 0;
        this.client = client;
        const on = (k, f) => this.off.push(client.on(k, f));
        on("hello", (h) => {
            this.me = h.user;
            // Without the snapshot, ask each view after every (re)connection.
            if (!client.snapshot)
                this.fullResync();
        });
        on("inbox", (f) => this.onSnapshot(f));
        on("message", (f) => this.onMessage(f));
        on("status", (f) => this.onState(f.conversation, f.seq, f.conversation_state, undefined));
        on("access_granted", (f) => this.onState(f.conversation, f.seq, f.conversation_state, f.access));
        on("access_revoked", (f) => this.remove(f.conversation));
        on("marks", (f) => this.onMarks(f));
        on("notification", (f) => {
            this.unread = f.unread;
            this.myUnread = f.my_unread;
            this.touch();
        });
        on("message_updated", (f) => this.editMessage(f.conversation, f.seq, f.message_id, f.body));
        on("message_deleted", (f) => this.editMessage(f.conversation, f.seq, f.message_id, ""));
        on("message_status", (f) => this.onDelivery(f));
        on("typing", (f) => this.onTyping(f));
        on("presence", (f) => {
            if (f.online)
                this.online.add(f.user);
            else
                this.online.delete(f.user);
            this.touch();
        });
        on("replay_gap", () => this.resync(VIEW_NAMES, 0));
        if (client.hello) {
            this.me = client.hello.user;
            this.fullResync();
        }
    }
    /** Subscribes to changes (coalesced: at most once per task). */
    on(event, handler) {
        if (event !== "change")
            throw new Error(`unknown event ${event}`);
        this.handlers.add(handler);
        return () => {
            this.handlers.delete(handler);
        };
    }
    /** Stops listening to the client. */
    dispose() {
        for (const f of this.off)
            f();
        this.off = [];
        if (this.resyncTimer)
            clearTimeout(this.resyncTimer);
    }
    /** Live messages seen in a conversation, oldest first (edits and deletions applied). */
    messages(conversation) {
        return this.msgs.get(conversation) ?? [];
    }
    /** Loads the next page of a view (the snapshot and the re-syncs hold the first page);
     * resolves to whether more remain. */
    async more(view, limit = 50) {
        const page = await this.client.view(view, { cursor: this.views[view].length, limit });
        for (const item of page.items) {
            const prev = this.conversations.get(item.conversation.id);
            if (prev && prev.seq > item.seq)
                continue;
            const it = this.fromView(item, prev);
            it.views.add(view);
            this.conversations.set(it.id, it);
            if (view === "waitlist")
                this.learnTeam(it);
        }
        this.counts[view] = page.total;
        this.rebuildViews();
        this.touch();
        return page.next_cursor !== null;
    }
    /** The items of a view, newest activity first. */
    list(view) {
        return (this.views[view] ?? []).map((id) => this.conversations.get(id)).filter(Boolean);
    }
    // -------------------------------------------------------------- frames
    onSnapshot(f) {
        this.unread = f.unread;
        this.myUnread = f.my_unread;
        const fresh = new Map();
        const newer = []; // a frame already brought a later state than the page
        for (const v of VIEW_NAMES) {
            for (const item of f.views[v]?.items ?? []) {
                const id = item.conversation.id;
                if (fresh.has(id))
                    continue;
                const prev = this.conversations.get(id);
                let it;
                if (prev && prev.seq > item.seq) {
                    it = prev;
                    newer.push(prev);
                }
                else
                    it = this.fromView(item, prev);
                it.views = new Set();
                fresh.set(id, it);
            }
        }
        for (const id of this.conversations.keys())
            if (!fresh.has(id))
                this.msgs.delete(id);
        this.conversations = fresh;
        for (const v of VIEW_NAMES) {
            const page = f.views[v];
            const ids = (page?.items ?? []).map((i) => i.conversation.id);
            for (const id of ids)
                fresh.get(id).views.add(v);
            if (v === "waitlist")
                for (const id of ids)
                    this.learnTeam(fresh.get(id));
            this.counts[v] = page?.total ?? ids.length;
        }
        this.rebuildViews();
        for (const it of newer)
            this.place(it);
        this.touch();
    }
    fromView(item, prev) {
        const id = item.conversation.id;
        const last = prev?.lastMessage && prev.lastMessageSeq === item.last_message_seq ? prev.lastMessage : null;
        return {
            id,
            state: item.conversation,
            access: String(item.access),
            seq: Math.max(item.seq, prev?.seq ?? 0),
            lastMessage: last,
            lastMessageSeq: item.last_message_seq,
            lastTs: item.last_ts,
            awaitingReply: item.awaiting_reply,
            unread: item.unread,
            marks: { ...item.marks },
            views: prev ? new Set(prev.views) : new Set(),
            typing: prev?.typing ?? [],
        };
    }
    item(id) {
        let it = this.conversations.get(id);
        if (!it) {
            it = {
                id,
                state: { id },
                access: "read",
                seq: 0,
                lastMessage: null,
                lastMessageSeq: 0,
                lastTs: 0,
                awaitingReply: false,
                unread: false,
                marks: { read_seq: 0, muted: false, hidden: false, archived: false },
                views: new Set(),
                typing: [],
            };
            this.conversations.set(id, it);
        }
        return it;
    }
    onMessage(f) {
        const known = this.conversations.has(f.conversation);
        const it = this.item(f.conversation);
        const m = f.message;
        it.seq = Math.max(it.seq, f.seq);
        it.lastMessage = m;
        it.lastMessageSeq = f.seq;
        it.lastTs = m.ts || Date.now();
        it.awaitingReply = m.sender.kind === "contact";
        // The sender's own message marks the conversation read for them (as the gateway does).
        if (m.sender.kind === "user" && m.sender.id === this.me)
            it.marks.read_seq = Math.max(it.marks.read_seq, f.seq);
        it.unread = f.seq > it.marks.read_seq;
        it.marks.hidden = false; // a new message un-hides a conversation
        let list = this.msgs.get(f.conversation);
        if (!list)
            this.msgs.set(f.conversation, (list = []));
        list.push(m);
        if (list.length > MESSAGES_KEPT)
            list.splice(0, list.length - MESSAGES_KEPT);
        this.place(it);
        // A conversation the model did not know (beyond the first page, or before any sync):
        // its state is unknown, so ask the views.
        if (!known)
            this.resync(VIEW_NAMES);
        this.touch();
    }
    onState(id, seq, state, access) {
        const known = this.conversations.has(id);
        const it = this.item(id);
        it.state = state;
        it.seq = Math.max(it.seq, seq);
        if (access)
            it.access = access;
        this.place(it);
        if (!known)
            this.resync(["all"]);
        this.touch();
    }
    onMarks(f) {
        this.unread = f.unread;
        this.myUnread = f.my_unread;
        const it = this.conversations.get(f.conversation);
        if (it) {
            it.marks = { read_seq: f.read_seq, muted: f.muted, hidden: f.hidden, archived: f.archived };
            it.unread = it.lastMessageSeq > f.read_seq;
            this.place(it);
        }
        this.touch();
    }
    editMessage(conversation, seq, id, body) {
        const it = this.conversations.get(conversation);
        if (it)
            it.seq = Math.max(it.seq, seq);
        const list = this.msgs.get(conversation);
        const i = list ? list.findIndex((m) => m.id === id) : -1;
        if (list && i >= 0) {
            const m = { ...list[i], body };
            if (body === "") {
                delete m.meta;
                delete m.attachments;
            }
            list[i] = m;
            if (it && it.lastMessage && it.lastMessage.id === id)
                it.lastMessage = m;
            this.touch();
        }
    }
    onDelivery(f) {
        const it = this.conversations.get(f.conversation);
        if (it)
            it.seq = Math.max(it.seq, f.seq);
        const list = this.msgs.get(f.conversation);
        const i = list ? list.findIndex((m) => m.id === f.message_id) : -1;
        if (list && i >= 0) {
            const delivery = { status: f.status, ts: f.ts };
            if (f.error !== null)
                delivery.error = f.error;
            const m = { ...list[i], delivery };
            list[i] = m;
            if (it && it.lastMessage && it.lastMessage.id === f.message_id)
                it.lastMessage = m;
            this.touch();
        }
    }
    onTyping(f) {
        let users = this.typingUntil.get(f.conversation);
        if (!users)
            this.typingUntil.set(f.conversation, (users = new Map()));
        users.set(f.user, Date.now() + TYPING_MS);
        this.refreshTyping(f.conversation);
        setTimeout(() => this.refreshTyping(f.conversation), TYPING_MS + 10);
    }
    refreshTyping(conversation) {
        const users = this.typingUntil.get(conversation);
        const now = Date.now();
        const list = [];
        if (users)
            for (const [u, until] of users)
                if (until > now)
                    list.push(u);
                else
                    users.delete(u);
        const it = this.conversations.get(conversation);
        if (it && it.typing.join() !== list.join()) {
            it.typing = list;
            this.touch();
        }
    }
    remove(id) {
        const it = this.conversations.get(id);
        if (it)
            for (const v of it.views)
                this.leave(it, v);
        this.conversations.delete(id);
        this.msgs.delete(id);
        this.typingUntil.delete(id);
        this.touch();
    }
    // -------------------------------------------------------------- views
    learnTeam(it) {
        if (typeof it.state.team === "string")
            this.teams.add(it.state.team);
    }
    /** Recomputes the views of one conversation (docs/protocol.md, Inbox) and moves it into
     * place (newest activity first) in each. */
    place(it) {
        const s = it.state;
        const open = (s.status ?? "open") === "open";
        const customer = (s.kind ?? "customer") === "customer";
        const unassigned = customer && !s.assignee && !s.team;
        const shelved = it.marks.archived || it.marks.hidden;
        const want = new Set();
        const ask = [];
        if (it.marks.archived)
            want.add("archived");
        if (!shelved) {
            want.add("all");
            if (!open)
                want.add("closed");
            if (open && this.me !== null && s.assignee === this.me)
                want.add("assigned_to_me");
            if (open && unassigned)
                want.add("unassigned");
            // Views on facts the client does not see: keep a conversation that still may belong,
            // ask the server about one that may have just come in.
            const opaque = [
                ["my_unassigned", open && unassigned],
                ["new", open && unassigned],
                ["waitlist", open && !s.assignee && typeof s.team === "string"],
            ];
            for (const [v, may] of opaque) {
                if (!may)
                    continue;
                if (v === "waitlist" && this.teams.has(s.team))
                    want.add(v);
                else if (it.views.has(v))
                    want.add(v);
                else
                    ask.push(v);
            }
        }
        for (const v of it.views)
            if (!want.has(v))
                this.leave(it, v);
        for (const v of want)
            this.enter(it, v);
        if (ask.length)
            this.resync(ask);
    }
    leave(it, v) {
        const list = this.views[v];
        const i = list.indexOf(it.id);
        if (i >= 0)
            list.splice(i, 1);
        if (it.views.delete(v))
            this.counts[v] = Math.max(0, this.counts[v] - 1);
    }
    enter(it, v) {
        const list = this.views[v];
        const i = list.indexOf(it.id);
        if (i >= 0)
            list.splice(i, 1);
        else if (!it.views.has(v))
            this.counts[v] += 1;
        it.views.add(v);
        // Binary search: newest activity first, then id (the server's order).
        let lo = 0;
        let hi = list.length;
        while (lo < hi) {
            const mid = (lo + hi) >> 1;
            const o = this.conversations.get(list[mid]);
            const before = o && (o.lastTs > it.lastTs || (o.lastTs === it.lastTs && o.id < it.id));
            if (before)
                lo = mid + 1;
            else
                hi = mid;
        }
        list.splice(lo, 0, it.id);
    }
    rebuildViews() {
        for (const v of VIEW_NAMES)
            this.views[v] = [];
        const all = [...this.conversations.values()].sort((a, b) => b.lastTs - a.lastTs || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
        for (const it of all)
            for (const v of it.views)
                this.views[v].push(it.id);
    }
    /** The first page of every view, applied as a snapshot (the model is replaced whole). */
    fullResync() {
        const gen = ++this.fullGen;
        Promise.all(VIEW_NAMES.map((v) => this.client.view(v))).then((pages) => {
            if (gen !== this.fullGen)
                return; // a newer one is under way
            const views = {};
            pages.forEach((p, i) => (views[VIEW_NAMES[i]] = p));
            this.onSnapshot({ type: "inbox", unread: this.unread, my_unread: this.myUnread, views });
        }, () => {
            /* asked again after the next hello */
        });
    }
    /** Asks the server for the first page of `views` (debounced). */
    resync(views, delayMs = 150) {
        for (const v of views)
            this.resyncViews.add(v);
        if (this.resyncTimer) {
            if (delayMs > 0)
                return;
            clearTimeout(this.resyncTimer);
        }
        this.resyncTimer = setTimeout(() => {
            this.resyncTimer = null;
            const todo = [...this.resyncViews];
            this.resyncViews.clear();
            for (const v of todo) {
                this.client.view(v).then((page) => this.applyPage(v, page), () => {
                    /* retried after the next hello */
                });
            }
        }, delayMs);
    }
    applyPage(v, page) {
        const ids = new Set(page.items.map((i) => i.conversation.id));
        for (const item of page.items) {
            const prev = this.conversations.get(item.conversation.id);
            // A newer frame than the page may already have arrived: keep the newer state.
            if (prev && prev.seq > item.seq)
                continue;
            const it = this.fromView(item, prev);
            this.conversations.set(it.id, it);
            if (v === "waitlist")
                this.learnTeam(it);
        }
        for (const id of this.views[v].slice()) {
            if (!ids.has(id)) {
                const it = this.conversations.get(id);
                if (it)
                    it.views.delete(v);
            }
        }
        for (const id of ids)
            this.conversations.get(id)?.views.add(v);
        this.counts[v] = page.total;
        this.rebuildViews();
        this.touch();
    }
    touch() {
        if (this.changed)
            return;
        this.changed = true;
        queueMicrotask(() => {
            this.changed = false;
            for (const h of [...this.handlers]) {
                try {
                    h();
                }
                catch (e) {
                    setTimeout(() => {
                        throw e;
                    });
                }
            }
        });
    }
}
