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

// ------------------------------------------------------------------ frames (server → client)

export type Access = "read" | "write";
export type ViewName =
  | "assigned_to_me"
  | "unassigned"
  | "my_unassigned"
  | "waitlist"
  | "new"
  | "all"
  | "closed"
  | "archived";
export const VIEW_NAMES: readonly ViewName[] = [
  "assigned_to_me",
  "unassigned",
  "my_unassigned",
  "waitlist",
  "new",
  "all",
  "closed",
  "archived",
];

/** A conversation in the world format (`conversation_state`, view items). */
export interface ConversationState {
  id: string;
  workspace?: string;
  kind?: "customer" | "direct" | "group" | "item";
  channel?: string | null;
  contact?: string | null;
  author?: string | null;
  participants?: string[];
  assignee?: string | null;
  team?: string | null;
  collaborators?: string[];
  private?: boolean;
  status?: "open" | "closed";
  item_acl?: Record<string, string>;
  thread?: string;
  [key: string]: unknown;
}

export interface Message {
  id: string;
  conversation: string;
  sender: { kind: "contact" | "user"; id: string };
  body: string;
  ts: number;
  client_id?: string;
  meta?: Record<string, unknown>;
  /** An internal note: seen by the agents who can read the conversation, never sent to the customer. */
  note?: boolean;
  /** Files attached by reference. */
  attachments?: Attachment[];
  /** The latest delivery receipt of an agent's reply. */
  delivery?: { status: DeliveryStatus; error?: string; ts: number };
}

/** A file attached to a message, by reference (the gateway stores no content). */
export interface Attachment {
  /** `http(s)://` URL of the file. */
  url: string;
  name: string;
  mime: string;
  /** Bytes; at most the gateway's `max_attachment_bytes`. */
  size: number;
}

export type DeliveryStatus = "sent" | "delivered" | "read" | "failed";

export interface Marks {
  read_seq: number;
  muted: boolean;
  hidden: boolean;
  archived: boolean;
}

export interface ViewItem {
  conversation: ConversationState;
  seq: number;
  access: Access | string;
  last_message_seq: number;
  last_ts: number;
  awaiting_reply: boolean;
  unread: boolean;
  marks: Marks;
}

export interface ViewPage {
  view: ViewName;
  items: ViewItem[];
  total: number;
  next_cursor: number | null;
}

export interface HelloFrame {
  type: "hello";
  connection: string | number;
  user: string;
  workspace: string;
  node: string;
  heartbeat_secs: number;
  idle_timeout_secs: number;
  max_frame_bytes: number;
}
export interface MessageFrame {
  type: "message";
  conversation: string;
  seq: number;
  message: Message;
}
export type StatusEvent =
  | "created"
  | "assigned"
  | "unassigned"
  | "collaborator_added"
  | "collaborator_removed"
  | "closed"
  | "reopened"
  | "privacy_changed"
  | "updated";
export interface StatusFrame {
  type: "status";
  conversation: string;
  seq: number;
  event: StatusEvent | string;
  by: string | null;
  user?: string;
  conversation_state: ConversationState;
}
export interface AccessGrantedFrame {
  type: "access_granted";
  conversation: string;
  seq: number;
  access: Access;
  conversation_state: ConversationState;
}
export interface AccessRevokedFrame {
  type: "access_revoked";
  conversation: string;
}
export interface AckFrame {
  type: "ack";
  ref: string | null;
  message_id: string;
  seq: number;
  duplicate: boolean;
}
export interface OkFrame {
  type: "ok";
  ref: string | null;
  conversation?: string;
  seq?: number;
  [key: string]: unknown;
}
export interface ErrorFrame {
  type: "error";
  ref: string | null;
  code: string;
  message: string;
  field?: string;
}
export interface ReplayGapFrame {
  type: "replay_gap";
  conversation: string;
  from_seq: number;
  oldest_seq: number;
}
export interface PongFrame {
  type: "pong";
  ref?: string | null;
}
export interface InboxFrame {
  type: "inbox";
  unread: number;
  my_unread: number;
  views: Partial<Record<ViewName, ViewPage>>;
}
export interface ViewFrame extends ViewPage {
  type: "view";
  ref: string | null;
}
export type NotificationKind = "added" | "removed" | "closed" | "reopened" | "new_message" | "mentioned";
export interface NotificationFrame {
  type: "notification";
  kind: NotificationKind | string;
  conversation: string;
  seq: number;
  unread: number;
  my_unread: number;
  /** `new_message` / `mentioned`: the message it is about (which arrives whole in its `message` frame). */
  message_id?: string;
  sender?: Message["sender"];
  /** The body's first 100 characters, for a desktop notification. */
  preview?: string;
}
export interface MarksFrame extends Marks {
  type: "marks";
  conversation: string;
  unread: number;
  my_unread: number;
}
export interface MessageUpdatedFrame {
  type: "message_updated";
  conversation: string;
  seq: number;
  message_id: string;
  body: string;
  by: string;
}
export interface MessageDeletedFrame {
  type: "message_deleted";
  conversation: string;
  seq: number;
  message_id: string;
  by: string;
}
export interface MessageStatusFrame {
  type: "message_status";
  conversation: string;
  seq: number;
  message_id: string;
  status: DeliveryStatus;
  error: string | null;
  ts: number;
}
export interface TypingFrame {
  type: "typing";
  conversation: string;
  user: string;
}
export interface PresenceFrame {
  type: "presence";
  user: string;
  online: boolean;
}
export interface BulkResultFrame {
  type: "bulk_result";
  ref: string | null;
  results: { conversation: string; ok: boolean; code?: string; message?: string }[];
}

export type ServerFrame =
  | HelloFrame
  | MessageFrame
  | StatusFrame
  | AccessGrantedFrame
  | AccessRevokedFrame
  | AckFrame
  | OkFrame
  | ErrorFrame
  | ReplayGapFrame
  | PongFrame
  | InboxFrame
  | ViewFrame
  | NotificationFrame
  | MarksFrame
  | MessageUpdatedFrame
  | MessageDeletedFrame
  | MessageStatusFrame
  | TypingFrame
  | PresenceFrame
  | BulkResultFrame;

// ------------------------------------------------------------------ client API

export type ConnectionState = "connecting" | "open" | "reconnecting" | "offline" | "closed";

/** What a `replay_gap` asks the application to refetch. */
export interface ReplayGap extends ReplayGapFrame {
  /** The events `firstSeq` ≤ seq ≤ `lastSeq` (`from_seq` … `oldest_seq − 1`) are gone from the
   * kept history and will not be replayed; those from `oldest_seq` on follow. Refetch the
   * conversation's state (e.g. `view`; the Inbox does) and what the UI showed of that range. */
  missing: { conversation: string; firstSeq: number; lastSeq: number };
}

export interface Events {
  state: ConnectionState;
  hello: HelloFrame;
  inbox: InboxFrame;
  message: MessageFrame;
  status: StatusFrame;
  access_granted: AccessGrantedFrame;
  access_revoked: AccessRevokedFrame;
  marks: MarksFrame;
  notification: NotificationFrame;
  message_updated: MessageUpdatedFrame;
  message_deleted: MessageDeletedFrame;
  message_status: MessageStatusFrame;
  typing: TypingFrame;
  presence: PresenceFrame;
  replay_gap: ReplayGap;
  /** Every server frame, before its own event (a duplicate dropped by `seq` is not one). */
  frame: ServerFrame;
  /** `error` frames without a pending command. */
  error: ErrorFrame;
  /** A connection closed (the client may reconnect; see `state`). */
  disconnect: { code: number; reason: string; willReconnect: boolean };
}

export interface Ack {
  messageId: string;
  seq: number;
  duplicate: boolean;
  clientId: string;
}

export interface ConnectOptions {
  /** ws(s)://host/v1/ws (no query) */
  url: string;
  /** Called on connect, after 4003 (or a connection refused before `hello`), and before `exp`. */
  getToken: () => string | Promise<string>;
  /** `?snapshot=true`: an `inbox` frame right after `hello` (on every connection). */
  snapshot?: boolean;
  /** `?presence=true`: `presence` frames. */
  presence?: boolean;
  /** Default `globalThis.WebSocket`. */
  WebSocket?: typeof WebSocket;
  /** Exponential backoff with full jitter: a random delay in [0, min(maxMs, initialMs·2^attempt)). */
  backoff?: { initialMs?: number; maxMs?: number };
  /** Default 10000. */
  commandTimeoutMs?: number;
  /** Renew the token this many seconds before its `exp` (default: a tenth of its lifetime,
   * between 2 and 60 s); `false` never renews early (the server then closes with 4003, and
   * the client reconnects with a new token). */
  refreshBeforeExpSecs?: number | false;
  /** Failed connection attempts in a row after which the state is "offline" (default 3). */
  offlineAfterAttempts?: number;
  /** A connection without `hello` after this long is abandoned and retried (default 10000). */
  connectTimeoutMs?: number;
}

export interface SendOptions {
  /** Idempotency key; generated when absent (a send is retried with it after a reconnect). */
  clientId?: string;
  mentions?: string[];
  /** Store an internal note instead of a reply. */
  note?: boolean;
  attachments?: Attachment[];
}

/** `create_conversation` of kind `customer`: text a customer first on a channel. */
export interface CustomerConversationOptions {
  channel: string;
  contact: string;
  /** The adapter's thread key (e.g. the customer's number): an open conversation of it is joined. */
  thread?: string;
  /** Privacy of a conversation this opens (a joined one keeps its own). */
  private?: boolean;
  /** The first message. */
  body: string;
  attachments?: Attachment[];
  /** Idempotency key of the first message; generated when absent. */
  clientId?: string;
}

export interface ViewOptions {
  filter?: { private?: boolean; channel?: string; status?: "open" | "closed"; team?: string };
  cursor?: number;
  limit?: number;
}

export interface Client {
  readonly state: ConnectionState;
  /** The last `hello` (null before the first). */
  readonly hello: HelloFrame | null;
  /** Whether each connection asks for the `inbox` snapshot (`?snapshot=true`). */
  readonly snapshot: boolean;
  on<K extends keyof Events>(event: K, handler: (e: Events[K]) => void): () => void;
  send(conversation: string, body: string, opts?: SendOptions): Promise<Ack>;
  assign(conversation: string, assignee: string | null): Promise<void>;
  addCollaborator(conversation: string, user: string): Promise<void>;
  removeCollaborator(conversation: string, user: string): Promise<void>;
  close(conversation: string): Promise<void>;
  reopen(conversation: string): Promise<void>;
  setPrivate(conversation: string, value: boolean): Promise<void>;
  read(conversation: string, seq: number): Promise<void>;
  mute(conversation: string, on?: boolean): Promise<void>;
  hide(conversation: string, on?: boolean): Promise<void>;
  archive(conversation: string, on?: boolean): Promise<void>;
  typing(conversation: string): void;
  focus(conversation: string | null): Promise<void>;
  editMessage(conversation: string, messageId: string, body: string): Promise<void>;
  deleteMessage(conversation: string, messageId: string): Promise<void>;
  createConversation(kind: "direct" | "group", participants: string[]): Promise<{ conversation: string; seq: number }>;
  /** Texts a customer first; `seq` is the first message's. */
  startCustomerConversation(opts: CustomerConversationOptions): Promise<{ conversation: string; seq: number }>;
  view(view: ViewName | string, opts?: ViewOptions): Promise<ViewPage>;
  bulk(
    action: "assign" | "mute" | "unmute",
    conversations: string[],
    assignee?: string | null,
  ): Promise<BulkResultFrame["results"]>;
  ping(): Promise<void>;
  /** Last `seq` seen per conversation (what `?resume=` sends). */
  positions(): Record<string, number>;
  /** Stop for good: closes the connection, rejects pending commands with "closed". */
  disconnect(): void;
}

/** A refused command: `code` is the server's error code, or "timeout" / "closed". */
export class SwitchboardError extends Error {
  code: string;
  ref?: string;
  field?: string;
  constructor(code: string, message: string, ref?: string, field?: string) {
    super(message);
    this.name = "SwitchboardError";
    this.code = code;
    if (ref !== undefined) this.ref = ref;
    if (field !== undefined) this.field = field;
  }
}

// ------------------------------------------------------------------ helpers

/** Decodes a JWT's payload without verifying it (the client only reads `exp`/`iat`). */
export function decodeJwtPayload(token: string): Record<string, unknown> | null {
  const part = token.split(".")[1];
  if (!part) return null;
  try {
    let b64 = part.replace(/-/g, "+").replace(/_/g, "/");
    while (b64.length % 4) b64 += "=";
    const bin = atob(b64);
    const bytes = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
    const v = JSON.parse(new TextDecoder().decode(bytes));
    return v && typeof v === "object" ? v : null;
  } catch {
    return null;
  }
}

function expOf(token: string): number {
  const exp = decodeJwtPayload(token)?.exp;
  return typeof exp === "number" ? exp : -Infinity;
}

/** Full-jitter exponential backoff: uniform in [0, min(max, initial·2^attempt)). */
export function backoffDelay(attempt: number, initialMs: number, maxMs: number, random = Math.random): number {
  const cap = Math.min(maxMs, initialMs * Math.pow(2, Math.min(attempt, 30)));
  return Math.floor(random() * cap);
}

let idCounter = 0;
function randomId(): string {
  const c = (globalThis as { crypto?: { randomUUID?: () => string } }).crypto;
  if (c && typeof c.randomUUID === "function") return c.randomUUID();
  idCounter += 1;
  return `c${Date.now().toString(36)}${Math.random().toString(36).slice(2)}${idCounter}`;
}

/** Frames that carry a conversation's `seq` and advance its position. */
const SEQUENCED = new Set(["message", "status", "message_updated", "message_deleted", "message_status"]);
/** Frames that answer a command. */
const REPLIES = new Set(["ack", "ok", "view", "bulk_result", "pong"]);
/** Above this length the resume positions go in a `resume` command instead of the URL. */
const MAX_RESUME_IN_URL = 48 * 1024;

type Pending = {
  frame: Record<string, unknown>;
  resolve: (f: ServerFrame) => void;
  reject: (e: SwitchboardError) => void;
  timer: ReturnType<typeof setTimeout>;
  conn: Conn | null;
  /** Safe to send again after a reconnect (a `send` with its client_id, reads of state). */
  retry: boolean;
};

/** One WebSocket and its timers. */
class Conn {
  ws: WebSocket;
  hello: HelloFrame | null = null;
  lastRx = Date.now();
  lastTx = Date.now();
  idleTimer: ReturnType<typeof setInterval> | null = null;
  helloTimer: ReturnType<typeof setTimeout> | null = null;
  closed = false;
  constructor(ws: WebSocket) {
    this.ws = ws;
  }
}

class ClientImpl implements Client {
  private opts: ConnectOptions;
  private WS: typeof WebSocket;
  private handlers = new Map<string, Set<(e: never) => void>>();
  private _state: ConnectionState = "connecting";
  private _hello: HelloFrame | null = null;
  private pos = new Map<string, number>();
  private pending = new Map<string, Pending>();
  private queue: string[] = []; // refs waiting for an open connection
  private refN = 0;
  private conn: Conn | null = null; // the current connection
  private old: Conn | null = null; // a connection being replaced (token renewal)
  private token: string | null = null;
  private tokenStale = true;
  private attempt = 0;
  private failures = 0;
  private reconnectTimer: ReturnType<typeof setTimeout> | null = null;
  private refreshTimer: ReturnType<typeof setTimeout> | null = null;
  private stopped = false;
  private connecting = false;
  private onlineListener: (() => void) | null = null;
  private typingSent = new Map<string, number>();

  constructor(opts: ConnectOptions) {
    this.opts = opts;
    const WS = opts.WebSocket ?? (globalThis as { WebSocket?: typeof WebSocket }).WebSocket;
    if (!WS) throw new Error("no WebSocket: pass opts.WebSocket (Node 20 needs --experimental-websocket)");
    this.WS = WS;
    const g = globalThis as { addEventListener?: (t: string, f: () => void) => void };
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

  get state(): ConnectionState {
    return this._state;
  }
  get hello(): HelloFrame | null {
    return this._hello;
  }
  get snapshot(): boolean {
    return !!this.opts.snapshot;
  }

  on<K extends keyof Events>(event: K, handler: (e: Events[K]) => void): () => void {
    let set = this.handlers.get(event);
    if (!set) this.handlers.set(event, (set = new Set()));
    set.add(handler as (e: never) => void);
    return () => {
      set!.delete(handler as (e: never) => void);
    };
  }

  private emit<K extends keyof Events>(event: K, value: Events[K]): void {
    const set = this.handlers.get(event);
    if (!set) return;
    for (const h of [...set]) {
      try {
        (h as (e: Events[K]) => void)(value);
      } catch (e) {
        // An application handler's bug must not break the connection.
        setTimeout(() => {
          throw e;
        });
      }
    }
  }

  private setState(s: ConnectionState): void {
    if (this._state === s) return;
    this._state = s;
    this.emit("state", s);
  }

  positions(): Record<string, number> {
    return Object.fromEntries(this.pos);
  }

  // -------------------------------------------------------------- connecting

  private async open(replacing: boolean): Promise<void> {
    if (this.stopped || this.connecting) return;
    this.connecting = true;
    let token: string;
    try {
      if (this.tokenStale || !this.token || this.expiresWithin(2)) {
        const previous = this.token;
        const next = await this.opts.getToken();
        if (replacing && previous && !(expOf(next) > expOf(previous))) {
          // A renewal that got no later expiry (a cached token): keep the current connection
          // and ask again later; at worst the server closes with 4003 and we reconnect.
          this.connecting = false;
          if (!this.stopped && this.conn && this.conn.hello && !this.conn.closed) this.retryRenewal();
          return;
        }
        this.token = next;
        this.tokenStale = false;
      }
      token = this.token;
    } catch (e) {
      this.connecting = false;
      if (this.stopped) return;
      if (replacing && this.conn && this.conn.hello && !this.conn.closed) this.retryRenewal();
      else this.failed();
      return;
    }
    if (this.stopped) {
      this.connecting = false;
      return;
    }
    const params = new URLSearchParams();
    params.set("token", token);
    if (this.opts.snapshot) params.set("snapshot", "true");
    if (this.opts.presence) params.set("presence", "true");
    let resumeCommand: Record<string, number> | null = null;
    if (this.pos.size > 0) {
      const resume = JSON.stringify(this.positions());
      if (resume.length <= MAX_RESUME_IN_URL) params.set("resume", resume);
      else resumeCommand = this.positions();
    }
    const sep = this.opts.url.includes("?") ? "&" : "?";
    let ws: WebSocket;
    try {
      ws = new this.WS(`${this.opts.url}${sep}${params.toString()}`);
    } catch (e) {
      this.connecting = false;
      if (replacing && this.conn && this.conn.hello && !this.conn.closed) this.retryRenewal();
      else this.failed();
      return;
    }
    const conn = new Conn(ws);
    if (replacing && this.conn && this.conn.hello) {
      this.old = this.conn;
    } else if (this.conn) {
      this.drop(this.conn, 1000, "replaced");
    }
    this.conn = conn;
    conn.helloTimer = setTimeout(() => {
      conn.helloTimer = null;
      if (conn.closed || conn.hello) return;
      this.drop(conn, 1000, "no hello in time");
      this.onClose(conn, 1006, "no hello in time");
    }, this.opts.connectTimeoutMs ?? 10000);
    ws.onmessage = (ev: MessageEvent) => {
      if (conn.closed) return;
      conn.lastRx = Date.now();
      if (typeof ev.data !== "string") return;
      let frame: ServerFrame;
      try {
        frame = JSON.parse(ev.data);
      } catch {
        return;
      }
      if (frame.type === "hello") {
        if (conn.helloTimer) clearTimeout(conn.helloTimer);
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
    ws.onclose = (ev: CloseEvent) => this.onClose(conn, ev.code, ev.reason || "");
    ws.onerror = () => {
      /* a close event follows */
    };
  }

  private expiresWithin(secs: number): boolean {
    const exp = this.token ? decodeJwtPayload(this.token)?.exp : undefined;
    return typeof exp === "number" && exp * 1000 - Date.now() < secs * 1000;
  }

  private onHello(conn: Conn, hello: HelloFrame, resumeCommand: Record<string, number> | null): void {
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
      if (p) this.transmit(ref, p);
    }
  }

  /** Application pings when nothing was received for `heartbeat_secs` (a browser cannot see
   * WebSocket pings); nothing received for `idle_timeout_secs` means the connection is dead. */
  private watchIdle(conn: Conn, hello: HelloFrame): void {
    const idleMs = Math.max(1, hello.idle_timeout_secs || 60) * 1000;
    const beatMs = Math.max(1, Math.min(hello.heartbeat_secs || 25, idleMs / 2000)) * 1000;
    const tick = Math.max(250, Math.min(beatMs, idleMs) / 4);
    conn.idleTimer = setInterval(() => {
      if (conn.closed) return;
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

  private scheduleRefresh(): void {
    if (this.refreshTimer) clearTimeout(this.refreshTimer);
    this.refreshTimer = null;
    const margin = this.opts.refreshBeforeExpSecs;
    if (margin === false || !this.token) return;
    const claims = decodeJwtPayload(this.token);
    const exp = claims?.exp;
    if (typeof exp !== "number") return;
    const iat = typeof claims?.iat === "number" ? (claims.iat as number) : Date.now() / 1000;
    const lifetime = Math.max(0, exp - iat);
    const before = margin ?? Math.min(60, Math.max(2, lifetime / 10));
    const at = exp * 1000 - before * 1000;
    const delay = Math.max(0, Math.min(at - Date.now(), 2 ** 31 - 1));
    this.refreshTimer = setTimeout(() => {
      this.refreshTimer = null;
      if (this.stopped || this._state !== "open") return;
      this.tokenStale = true;
      void this.open(true);
    }, delay);
  }

  /** The renewal failed (getToken threw, or the new connection did not reach `hello`): the
   * current connection stays; try again after a backoff delay. */
  private retryRenewal(): void {
    this.tokenStale = true;
    if (this.refreshTimer) clearTimeout(this.refreshTimer);
    this.refreshTimer = setTimeout(() => {
      this.refreshTimer = null;
      if (!this.stopped && this._state === "open") void this.open(true);
    }, this.delay());
  }

  /** Closes a replaced connection once its commands are answered (at most 2 s). */
  private retire(conn: Conn): void {
    const started = Date.now();
    const check = () => {
      if (conn.closed) return;
      const busy = [...this.pending.values()].some((p) => p.conn === conn);
      if (!busy || Date.now() - started > 2000) this.drop(conn, 1000, "token renewed");
      else setTimeout(check, 50);
    };
    check();
  }

  private drop(conn: Conn, code: number, reason: string): void {
    if (conn.closed) return;
    conn.closed = true;
    if (conn.idleTimer) clearInterval(conn.idleTimer);
    if (conn.helloTimer) clearTimeout(conn.helloTimer);
    conn.idleTimer = conn.helloTimer = null;
    conn.ws.onmessage = null;
    conn.ws.onclose = null;
    try {
      conn.ws.close(code === 4000 ? 4000 : 1000, reason);
    } catch {
      try {
        conn.ws.close();
      } catch {
        /* already closed */
      }
    }
    this.orphan(conn);
  }

  /** Commands in flight on a lost connection: retried on the next one when safe, else rejected. */
  private orphan(conn: Conn): void {
    for (const [ref, p] of this.pending) {
      if (p.conn !== conn) continue;
      p.conn = null;
      if (p.retry && !this.stopped) {
        this.queue.push(ref);
      } else {
        this.settle(ref);
        p.reject(new SwitchboardError("closed", "the connection closed before the reply", ref));
      }
    }
  }

  private onClose(conn: Conn, code: number, reason: string): void {
    const wasHello = conn.hello !== null;
    if (!conn.closed) {
      conn.closed = true;
      if (conn.idleTimer) clearInterval(conn.idleTimer);
      if (conn.helloTimer) clearTimeout(conn.helloTimer);
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
    if (conn !== this.conn) return;
    this.conn = null;
    this.connecting = false;
    if (this.stopped) return;
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
    if (this.refreshTimer) clearTimeout(this.refreshTimer);
    this.refreshTimer = null;
    this.setState("reconnecting");
    if (code === 4003) {
      this.tokenStale = true;
      this.schedule(0);
    } else if (code === 4008 || code === 1001 || code === 4000) {
      this.schedule(0);
    } else {
      this.schedule(this.delay());
    }
  }

  private delay(): number {
    const b = this.opts.backoff ?? {};
    const d = backoffDelay(this.attempt, b.initialMs ?? 500, b.maxMs ?? 30000);
    this.attempt += 1;
    return d;
  }

  private failed(): void {
    if (this.stopped) return;
    this.failures += 1;
    const offlineAfter = this.opts.offlineAfterAttempts ?? 3;
    const nav = (globalThis as { navigator?: { onLine?: boolean } }).navigator;
    if (this.failures >= offlineAfter || (nav && nav.onLine === false)) this.setState("offline");
    else if (this._state !== "connecting") this.setState("reconnecting");
    this.schedule(this.delay());
  }

  private schedule(ms: number): void {
    if (this.reconnectTimer) clearTimeout(this.reconnectTimer);
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = null;
      void this.open(false);
    }, ms);
  }

  private stop(state: ConnectionState, why: string): void {
    this.stopped = true;
    if (this.reconnectTimer) clearTimeout(this.reconnectTimer);
    if (this.refreshTimer) clearTimeout(this.refreshTimer);
    this.reconnectTimer = this.refreshTimer = null;
    for (const c of [this.conn, this.old]) if (c) this.drop(c, 1000, "client closed");
    this.conn = this.old = null;
    for (const [ref, p] of [...this.pending]) {
      this.settle(ref);
      p.reject(new SwitchboardError("closed", why, ref));
    }
    this.queue = [];
    const g = globalThis as { removeEventListener?: (t: string, f: () => void) => void };
    if (this.onlineListener && typeof g.removeEventListener === "function") {
      g.removeEventListener("online", this.onlineListener);
    }
    this.setState(state);
  }

  disconnect(): void {
    if (this.stopped) return;
    this.stop("closed", "disconnected by the application");
  }

  // -------------------------------------------------------------- frames

  private dispatch(conn: Conn, frame: ServerFrame): void {
    if (conn !== this.conn && conn !== this.old) return;
    const t = frame.type;
    if (SEQUENCED.has(t)) {
      const f = frame as MessageFrame;
      const have = this.pos.get(f.conversation);
      if (have !== undefined && f.seq <= have) return; // already seen (replay overlap, renewal)
      this.pos.set(f.conversation, f.seq);
    } else if (t === "access_granted") {
      const f = frame as AccessGrantedFrame;
      const have = this.pos.get(f.conversation);
      if (have === undefined || f.seq > have) this.pos.set(f.conversation, f.seq);
    } else if (t === "access_revoked") {
      this.pos.delete((frame as AccessRevokedFrame).conversation);
    } else if (t === "inbox") {
      // Conversations never seen get their position from the snapshot, so a later resume
      // covers them too (a conversation already tracked keeps its own: the replay follows).
      for (const page of Object.values((frame as InboxFrame).views)) this.learn(page);
    } else if (t === "view") {
      this.learn(frame as ViewFrame);
    }
    this.emit("frame", frame);
    if (REPLIES.has(t) || t === "error") {
      const ref = (frame as { ref?: string | null }).ref;
      const p = ref != null ? this.pending.get(ref) : undefined;
      if (p && ref != null) {
        this.settle(ref);
        if (t === "error") {
          const e = frame as ErrorFrame;
          p.reject(new SwitchboardError(e.code, e.message, ref, e.field));
        } else p.resolve(frame);
        return;
      }
      if (t === "error") this.emit("error", frame as ErrorFrame);
      return;
    }
    switch (t) {
      case "hello":
        this.emit("hello", frame as HelloFrame);
        break;
      case "replay_gap": {
        const f = frame as ReplayGapFrame;
        this.emit("replay_gap", {
          ...f,
          missing: { conversation: f.conversation, firstSeq: f.from_seq, lastSeq: f.oldest_seq - 1 },
        });
        break;
      }
      default:
        this.emit(t as keyof Events, frame as never);
    }
  }

  private learn(page: ViewPage | undefined): void {
    if (!page || !Array.isArray(page.items)) return;
    for (const item of page.items) {
      const id = item.conversation?.id;
      if (typeof id === "string" && !this.pos.has(id) && typeof item.seq === "number") this.pos.set(id, item.seq);
    }
  }

  // -------------------------------------------------------------- commands

  private raw(conn: Conn, frame: Record<string, unknown>): boolean {
    if (conn.closed || conn.ws.readyState !== 1) return false;
    try {
      conn.ws.send(JSON.stringify(frame));
      conn.lastTx = Date.now();
      return true;
    } catch {
      return false;
    }
  }

  private settle(ref: string): void {
    const p = this.pending.get(ref);
    if (!p) return;
    clearTimeout(p.timer);
    this.pending.delete(ref);
    const i = this.queue.indexOf(ref);
    if (i >= 0) this.queue.splice(i, 1);
  }

  private transmit(ref: string, p: Pending): void {
    const conn = this.conn;
    if (conn && conn.hello && this.raw(conn, p.frame)) p.conn = conn;
    else if (!this.queue.includes(ref)) this.queue.push(ref);
  }

  private command<T extends ServerFrame>(frame: Record<string, unknown>, retry = false): Promise<T> {
    if (this.stopped) return Promise.reject(new SwitchboardError("closed", "the client is disconnected"));
    this.refN += 1;
    const ref = `r${this.refN}`;
    const full = { ...frame, ref };
    return new Promise<T>((resolve, reject) => {
      const ms = this.opts.commandTimeoutMs ?? 10000;
      const timer = setTimeout(() => {
        if (!this.pending.has(ref)) return;
        this.settle(ref);
        reject(new SwitchboardError("timeout", `no reply to ${String(frame.type)} within ${ms} ms`, ref));
      }, ms);
      const p: Pending = {
        frame: full,
        resolve: resolve as (f: ServerFrame) => void,
        reject,
        timer,
        conn: null,
        retry,
      };
      this.pending.set(ref, p);
      this.transmit(ref, p);
    });
  }

  private async ok(frame: Record<string, unknown>, retry = false): Promise<void> {
    await this.command<OkFrame>(frame, retry);
  }

  async send(conversation: string, body: string, opts: SendOptions = {}): Promise<Ack> {
    const clientId = opts.clientId ?? randomId();
    const frame: Record<string, unknown> = { type: "send", conversation, body, client_id: clientId };
    if (opts.mentions && opts.mentions.length) frame.mentions = opts.mentions;
    if (opts.note) frame.note = true;
    if (opts.attachments && opts.attachments.length) frame.attachments = opts.attachments;
    const a = await this.command<AckFrame>(frame, true);
    return { messageId: a.message_id, seq: a.seq, duplicate: a.duplicate, clientId };
  }
  assign(conversation: string, assignee: string | null): Promise<void> {
    return this.ok({ type: "assign", conversation, assignee });
  }
  addCollaborator(conversation: string, user: string): Promise<void> {
    return this.ok({ type: "add_collaborator", conversation, user });
  }
  removeCollaborator(conversation: string, user: string): Promise<void> {
    return this.ok({ type: "remove_collaborator", conversation, user });
  }
  close(conversation: string): Promise<void> {
    return this.ok({ type: "close", conversation });
  }
  reopen(conversation: string): Promise<void> {
    return this.ok({ type: "reopen", conversation });
  }
  setPrivate(conversation: string, value: boolean): Promise<void> {
    return this.ok({ type: "set_private", conversation, private: value });
  }
  read(conversation: string, seq: number): Promise<void> {
    return this.ok({ type: "read", conversation, seq }, true);
  }
  mute(conversation: string, on = true): Promise<void> {
    return this.ok({ type: "mute", conversation, on }, true);
  }
  hide(conversation: string, on = true): Promise<void> {
    return this.ok({ type: "hide", conversation, on }, true);
  }
  archive(conversation: string, on = true): Promise<void> {
    return this.ok({ type: "archive", conversation, on }, true);
  }
  typing(conversation: string): void {
    // The gateway relays at most one per 2 s and conversation: send no more than that.
    const now = Date.now();
    if (now - (this.typingSent.get(conversation) ?? -Infinity) < 2000) return;
    const conn = this.conn;
    if (conn && conn.hello && this.raw(conn, { type: "typing", conversation })) {
      this.typingSent.set(conversation, now);
      if (this.typingSent.size > 1000) this.typingSent.clear();
    }
  }
  focus(conversation: string | null): Promise<void> {
    return this.ok({ type: "focus", conversation }, true);
  }
  editMessage(conversation: string, messageId: string, body: string): Promise<void> {
    return this.ok({ type: "edit_message", conversation, message_id: messageId, body });
  }
  deleteMessage(conversation: string, messageId: string): Promise<void> {
    return this.ok({ type: "delete_message", conversation, message_id: messageId });
  }
  async createConversation(
    kind: "direct" | "group",
    participants: string[],
  ): Promise<{ conversation: string; seq: number }> {
    const f = await this.command<OkFrame>({ type: "create_conversation", kind, participants });
    return { conversation: String(f.conversation), seq: Number(f.seq) };
  }
  async startCustomerConversation(
    opts: CustomerConversationOptions,
  ): Promise<{ conversation: string; seq: number }> {
    const frame: Record<string, unknown> = {
      type: "create_conversation",
      kind: "customer",
      channel: opts.channel,
      contact: opts.contact,
      body: opts.body,
      client_id: opts.clientId ?? randomId(),
    };
    if (opts.thread !== undefined) frame.thread = opts.thread;
    if (opts.private) frame.private = true;
    if (opts.attachments && opts.attachments.length) frame.attachments = opts.attachments;
    // Not retried after a reconnect: without a thread a retry would open a second conversation.
    const f = await this.command<OkFrame>(frame);
    return { conversation: String(f.conversation), seq: Number(f.seq) };
  }
  async view(view: ViewName | string, opts: ViewOptions = {}): Promise<ViewPage> {
    const frame: Record<string, unknown> = { type: "view", view };
    if (opts.filter) frame.filter = opts.filter;
    if (opts.cursor !== undefined) frame.cursor = opts.cursor;
    if (opts.limit !== undefined) frame.limit = opts.limit;
    const f = await this.command<ViewFrame>(frame, true);
    return { view: f.view, items: f.items, total: f.total, next_cursor: f.next_cursor };
  }
  async bulk(
    action: "assign" | "mute" | "unmute",
    conversations: string[],
    assignee?: string | null,
  ): Promise<BulkResultFrame["results"]> {
    const frame: Record<string, unknown> = { type: "bulk", action, conversations };
    if (assignee !== undefined) frame.assignee = assignee;
    const f = await this.command<BulkResultFrame>(frame);
    return f.results;
  }
  async ping(): Promise<void> {
    await this.command<PongFrame>({ type: "ping" }, true);
  }
}

/** Opens a client; it connects at once and keeps reconnecting until `disconnect()` or 1008. */
export function connect(opts: ConnectOptions): Client {
  return new ClientImpl(opts);
}

// ------------------------------------------------------------------ inbox model

/** One readable conversation as the inbox model knows it. */
export interface ConversationItem {
  id: string;
  /** World-format state (from the snapshot, `view`, `status` and `access_granted`). */
  state: ConversationState;
  access: string;
  /** Latest `seq` seen. */
  seq: number;
  lastMessage: Message | null;
  lastMessageSeq: number;
  /** Time of the last activity (ms), the views' order. */
  lastTs: number;
  /** The last message is the customer's. */
  awaitingReply: boolean;
  /** A message after my read mark. */
  unread: boolean;
  marks: Marks;
  /** The views it is in. */
  views: Set<ViewName>;
  /** Users typing now (a `typing` frame in the last 4 s). */
  typing: string[];
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
  conversations = new Map<string, ConversationItem>();
  views: Record<string, string[]> = Object.fromEntries(VIEW_NAMES.map((v) => [v, [] as string[]]));
  /** Conversations per view: the server's `total`, adjusted by the changes seen since. */
  counts: Record<string, number> = Object.fromEntries(VIEW_NAMES.map((v) => [v, 0]));
  unread = 0;
  myUnread = 0;
  /** Users online (with `presence: true`). */
  online = new Set<string>();

  private client: Client;
  private me: string | null = null;
  private teams = new Set<string>();
  private msgs = new Map<string, Message[]>();
  private typingUntil = new Map<string, Map<string, number>>();
  private handlers = new Set<() => void>();
  private changed = false;
  private resyncViews = new Set<ViewName>();
  private resyncTimer: ReturnType<typeof setTimeout> | null = null;
  private off: (() => void)[] = [];
  private fullGen = 0;

  constructor(client: Client) {
    this.client = client;
    const on = <K extends keyof Events>(k: K, f: (e: Events[K]) => void) => this.off.push(client.on(k, f));
    on("hello", (h) => {
      this.me = h.user;
      // Without the snapshot, ask each view after every (re)connection.
      if (!client.snapshot) this.fullResync();
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
      if (f.online) this.online.add(f.user);
      else this.online.delete(f.user);
      this.touch();
    });
    on("replay_gap", () => this.resync(VIEW_NAMES, 0));
    if (client.hello) {
      this.me = client.hello.user;
      this.fullResync();
    }
  }

  /** Subscribes to changes (coalesced: at most once per task). */
  on(event: "change", handler: () => void): () => void {
    if (event !== "change") throw new Error(`unknown event ${event}`);
    this.handlers.add(handler);
    return () => {
      this.handlers.delete(handler);
    };
  }

  /** Stops listening to the client. */
  dispose(): void {
    for (const f of this.off) f();
    this.off = [];
    if (this.resyncTimer) clearTimeout(this.resyncTimer);
  }

  /** Live messages seen in a conversation, oldest first (edits and deletions applied). */
  messages(conversation: string): Message[] {
    return this.msgs.get(conversation) ?? [];
  }

  /** Loads the next page of a view (the snapshot and the re-syncs hold the first page);
   * resolves to whether more remain. */
  async more(view: ViewName, limit = 50): Promise<boolean> {
    const page = await this.client.view(view, { cursor: this.views[view].length, limit });
    for (const item of page.items) {
      const prev = this.conversations.get(item.conversation.id);
      if (prev && prev.seq > item.seq) continue;
      const it = this.fromView(item, prev);
      it.views.add(view);
      this.conversations.set(it.id, it);
      if (view === "waitlist") this.learnTeam(it);
    }
    this.counts[view] = page.total;
    this.rebuildViews();
    this.touch();
    return page.next_cursor !== null;
  }

  /** The items of a view, newest activity first. */
  list(view: ViewName | string): ConversationItem[] {
    return (this.views[view] ?? []).map((id) => this.conversations.get(id)!).filter(Boolean);
  }

  // -------------------------------------------------------------- frames

  private onSnapshot(f: InboxFrame): void {
    this.unread = f.unread;
    this.myUnread = f.my_unread;
    const fresh = new Map<string, ConversationItem>();
    const newer: ConversationItem[] = []; // a frame already brought a later state than the page
    for (const v of VIEW_NAMES) {
      for (const item of f.views[v]?.items ?? []) {
        const id = item.conversation.id;
        if (fresh.has(id)) continue;
        const prev = this.conversations.get(id);
        let it: ConversationItem;
        if (prev && prev.seq > item.seq) {
          it = prev;
          newer.push(prev);
        } else it = this.fromView(item, prev);
        it.views = new Set();
        fresh.set(id, it);
      }
    }
    for (const id of this.conversations.keys()) if (!fresh.has(id)) this.msgs.delete(id);
    this.conversations = fresh;
    for (const v of VIEW_NAMES) {
      const page = f.views[v];
      const ids = (page?.items ?? []).map((i) => i.conversation.id);
      for (const id of ids) fresh.get(id)!.views.add(v);
      if (v === "waitlist") for (const id of ids) this.learnTeam(fresh.get(id)!);
      this.counts[v] = page?.total ?? ids.length;
    }
    this.rebuildViews();
    for (const it of newer) this.place(it);
    this.touch();
  }

  private fromView(item: ViewItem, prev?: ConversationItem): ConversationItem {
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

  private item(id: string): ConversationItem {
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

  private onMessage(f: MessageFrame): void {
    const known = this.conversations.has(f.conversation);
    const it = this.item(f.conversation);
    const m = f.message;
    it.seq = Math.max(it.seq, f.seq);
    it.lastMessage = m;
    it.lastMessageSeq = f.seq;
    it.lastTs = m.ts || Date.now();
    it.awaitingReply = m.sender.kind === "contact";
    // The sender's own message marks the conversation read for them (as the gateway does).
    if (m.sender.kind === "user" && m.sender.id === this.me) it.marks.read_seq = Math.max(it.marks.read_seq, f.seq);
    it.unread = f.seq > it.marks.read_seq;
    it.marks.hidden = false; // a new message un-hides a conversation
    let list = this.msgs.get(f.conversation);
    if (!list) this.msgs.set(f.conversation, (list = []));
    list.push(m);
    if (list.length > MESSAGES_KEPT) list.splice(0, list.length - MESSAGES_KEPT);
    this.place(it);
    // A conversation the model did not know (beyond the first page, or before any sync):
    // its state is unknown, so ask the views.
    if (!known) this.resync(VIEW_NAMES);
    this.touch();
  }

  private onState(id: string, seq: number, state: ConversationState, access?: Access): void {
    const known = this.conversations.has(id);
    const it = this.item(id);
    it.state = state;
    it.seq = Math.max(it.seq, seq);
    if (access) it.access = access;
    this.place(it);
    if (!known) this.resync(["all"]);
    this.touch();
  }

  private onMarks(f: MarksFrame): void {
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

  private editMessage(conversation: string, seq: number, id: string, body: string): void {
    const it = this.conversations.get(conversation);
    if (it) it.seq = Math.max(it.seq, seq);
    const list = this.msgs.get(conversation);
    const i = list ? list.findIndex((m) => m.id === id) : -1;
    if (list && i >= 0) {
      const m = { ...list[i], body };
      if (body === "") {
        delete m.meta;
        delete m.attachments;
      }
      list[i] = m;
      if (it && it.lastMessage && it.lastMessage.id === id) it.lastMessage = m;
      this.touch();
    }
  }

  private onDelivery(f: MessageStatusFrame): void {
    const it = this.conversations.get(f.conversation);
    if (it) it.seq = Math.max(it.seq, f.seq);
    const list = this.msgs.get(f.conversation);
    const i = list ? list.findIndex((m) => m.id === f.message_id) : -1;
    if (list && i >= 0) {
      const delivery: NonNullable<Message["delivery"]> = { status: f.status, ts: f.ts };
      if (f.error !== null) delivery.error = f.error;
      const m = { ...list[i], delivery };
      list[i] = m;
      if (it && it.lastMessage && it.lastMessage.id === f.message_id) it.lastMessage = m;
      this.touch();
    }
  }

  private onTyping(f: TypingFrame): void {
    let users = this.typingUntil.get(f.conversation);
    if (!users) this.typingUntil.set(f.conversation, (users = new Map()));
    users.set(f.user, Date.now() + TYPING_MS);
    this.refreshTyping(f.conversation);
    setTimeout(() => this.refreshTyping(f.conversation), TYPING_MS + 10);
  }

  private refreshTyping(conversation: string): void {
    const users = this.typingUntil.get(conversation);
    const now = Date.now();
    const list: string[] = [];
    if (users) for (const [u, until] of users) if (until > now) list.push(u);
    else users.delete(u);
    const it = this.conversations.get(conversation);
    if (it && it.typing.join() !== list.join()) {
      it.typing = list;
      this.touch();
    }
  }

  private remove(id: string): void {
    const it = this.conversations.get(id);
    if (it) for (const v of it.views) this.leave(it, v);
    this.conversations.delete(id);
    this.msgs.delete(id);
    this.typingUntil.delete(id);
    this.touch();
  }

  // -------------------------------------------------------------- views

  private learnTeam(it: ConversationItem): void {
    if (typeof it.state.team === "string") this.teams.add(it.state.team);
  }

  /** Recomputes the views of one conversation (docs/protocol.md, Inbox) and moves it into
   * place (newest activity first) in each. */
  private place(it: ConversationItem): void {
    const s = it.state;
    const open = (s.status ?? "open") === "open";
    const customer = (s.kind ?? "customer") === "customer";
    const unassigned = customer && !s.assignee && !s.team;
    const shelved = it.marks.archived || it.marks.hidden;
    const want = new Set<ViewName>();
    const ask: ViewName[] = [];
    if (it.marks.archived) want.add("archived");
    if (!shelved) {
      want.add("all");
      if (!open) want.add("closed");
      if (open && this.me !== null && s.assignee === this.me) want.add("assigned_to_me");
      if (open && unassigned) want.add("unassigned");
      // Views on facts the client does not see: keep a conversation that still may belong,
      // ask the server about one that may have just come in.
      const opaque: [ViewName, boolean][] = [
        ["my_unassigned", open && unassigned],
        ["new", open && unassigned],
        ["waitlist", open && !s.assignee && typeof s.team === "string"],
      ];
      for (const [v, may] of opaque) {
        if (!may) continue;
        if (v === "waitlist" && this.teams.has(s.team as string)) want.add(v);
        else if (it.views.has(v)) want.add(v);
        else ask.push(v);
      }
    }
    for (const v of it.views) if (!want.has(v)) this.leave(it, v);
    for (const v of want) this.enter(it, v);
    if (ask.length) this.resync(ask);
  }

  private leave(it: ConversationItem, v: ViewName): void {
    const list = this.views[v];
    const i = list.indexOf(it.id);
    if (i >= 0) list.splice(i, 1);
    if (it.views.delete(v)) this.counts[v] = Math.max(0, this.counts[v] - 1);
  }

  private enter(it: ConversationItem, v: ViewName): void {
    const list = this.views[v];
    const i = list.indexOf(it.id);
    if (i >= 0) list.splice(i, 1);
    else if (!it.views.has(v)) this.counts[v] += 1;
    it.views.add(v);
    // Binary search: newest activity first, then id (the server's order).
    let lo = 0;
    let hi = list.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      const o = this.conversations.get(list[mid]);
      const before = o && (o.lastTs > it.lastTs || (o.lastTs === it.lastTs && o.id < it.id));
      if (before) lo = mid + 1;
      else hi = mid;
    }
    list.splice(lo, 0, it.id);
  }

  private rebuildViews(): void {
    for (const v of VIEW_NAMES) this.views[v] = [];
    const all = [...this.conversations.values()].sort(
      (a, b) => b.lastTs - a.lastTs || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0),
    );
    for (const it of all) for (const v of it.views) this.views[v].push(it.id);
  }

  /** The first page of every view, applied as a snapshot (the model is replaced whole). */
  private fullResync(): void {
    const gen = ++this.fullGen;
    Promise.all(VIEW_NAMES.map((v) => this.client.view(v))).then(
      (pages) => {
        if (gen !== this.fullGen) return; // a newer one is under way
        const views: Partial<Record<ViewName, ViewPage>> = {};
        pages.forEach((p, i) => (views[VIEW_NAMES[i]] = p));
        this.onSnapshot({ type: "inbox", unread: this.unread, my_unread: this.myUnread, views });
      },
      () => {
        /* asked again after the next hello */
      },
    );
  }

  /** Asks the server for the first page of `views` (debounced). */
  private resync(views: readonly ViewName[], delayMs = 150): void {
    for (const v of views) this.resyncViews.add(v);
    if (this.resyncTimer) {
      if (delayMs > 0) return;
      clearTimeout(this.resyncTimer);
    }
    this.resyncTimer = setTimeout(() => {
      this.resyncTimer = null;
      const todo = [...this.resyncViews];
      this.resyncViews.clear();
      for (const v of todo) {
        this.client.view(v).then(
          (page) => this.applyPage(v, page),
          () => {
            /* retried after the next hello */
          },
        );
      }
    }, delayMs);
  }

  private applyPage(v: ViewName, page: ViewPage): void {
    const ids = new Set(page.items.map((i) => i.conversation.id));
    for (const item of page.items) {
      const prev = this.conversations.get(item.conversation.id);
      // A newer frame than the page may already have arrived: keep the newer state.
      if (prev && prev.seq > item.seq) continue;
      const it = this.fromView(item, prev);
      this.conversations.set(it.id, it);
      if (v === "waitlist") this.learnTeam(it);
    }
    for (const id of this.views[v].slice()) {
      if (!ids.has(id)) {
        const it = this.conversations.get(id);
        if (it) it.views.delete(v);
      }
    }
    for (const id of ids) this.conversations.get(id)?.views.add(v);
    this.counts[v] = page.total;
    this.rebuildViews();
    this.touch();
  }

  private touch(): void {
    if (this.changed) return;
    this.changed = true;
    queueMicrotask(() => {
      this.changed = false;
      for (const h of [...this.handlers]) {
        try {
          h();
        } catch (e) {
          setTimeout(() => {
            throw e;
          });
        }
      }
    });
  }
}
