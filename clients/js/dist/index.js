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
const SEQUENCED = new Set(["message", "status", "message_updated", "message_deleted"]);
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
                this.token = await this.opts.getToken();
                this.tokenStale = false;
            }
            token = this.token;
        }
        catch (e) {
            this.connecting = false;
            if (this.stopped)
                return;
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
        conn.idleTimer = null;
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
            conn.idleTimer = null;
            this.orphan(conn);
        }
        if (conn === this.old) {
            this.old = null;
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
            this.tokenStale = true;
            if (this.refreshTimer)
                clearTimeout(this.refreshTimer);
            this.refreshTimer = setTimeout(() => {
                this.refreshTimer = null;
                if (!this.stopped && this._state === "open")
                    void this.open(true);
            }, this.delay());
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
                    missing: { conversation: f.conversation, afterSeq: f.from_seq, beforeSeq: f.oldest_seq },
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
        const conn = this.conn;
        if (conn && conn.hello)
            this.raw(conn, { type: "typing", conversation });
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
