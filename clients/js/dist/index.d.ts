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
export type Access = "read" | "write";
export type ViewName = "assigned_to_me" | "unassigned" | "my_unassigned" | "waitlist" | "new" | "all" | "closed" | "archived";
export declare const VIEW_NAMES: readonly ViewName[];
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
    sender: {
        kind: "contact" | "user";
        id: string;
    };
    body: string;
    ts: number;
    client_id?: string;
    meta?: Record<string, unknown>;
    /** An internal note: seen by the agents who can read the conversation, never sent to the customer. */
    note?: boolean;
    /** Files attached by reference. */
    attachments?: Attachment[];
    /** The latest delivery receipt of an agent's reply. */
    delivery?: {
        status: DeliveryStatus;
        error?: string;
        ts: number;
    };
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
export type StatusEvent = "created" | "assigned" | "unassigned" | "collaborator_added" | "collaborator_removed" | "closed" | "reopened" | "privacy_changed" | "updated";
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
    results: {
        conversation: string;
        ok: boolean;
        code?: string;
        message?: string;
    }[];
}
export type ServerFrame = HelloFrame | MessageFrame | StatusFrame | AccessGrantedFrame | AccessRevokedFrame | AckFrame | OkFrame | ErrorFrame | ReplayGapFrame | PongFrame | InboxFrame | ViewFrame | NotificationFrame | MarksFrame | MessageUpdatedFrame | MessageDeletedFrame | MessageStatusFrame | TypingFrame | PresenceFrame | BulkResultFrame;
export type ConnectionState = "connecting" | "open" | "reconnecting" | "offline" | "closed";
/** What a `replay_gap` asks the application to refetch. */
export interface ReplayGap extends ReplayGapFrame {
    /** The events `firstSeq` ≤ seq ≤ `lastSeq` (`from_seq` … `oldest_seq − 1`) are gone from the
     * kept history and will not be replayed; those from `oldest_seq` on follow. Refetch the
     * conversation's state (e.g. `view`; the Inbox does) and what the UI showed of that range. */
    missing: {
        conversation: string;
        firstSeq: number;
        lastSeq: number;
    };
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
    disconnect: {
        code: number;
        reason: string;
        willReconnect: boolean;
    };
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
    backoff?: {
        initialMs?: number;
        maxMs?: number;
    };
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
    filter?: {
        private?: boolean;
        channel?: string;
        status?: "open" | "closed";
        team?: string;
    };
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
    createConversation(kind: "direct" | "group", participants: string[]): Promise<{
        conversation: string;
        seq: number;
    }>;
    /** Texts a customer first; `seq` is the first message's. */
    startCustomerConversation(opts: CustomerConversationOptions): Promise<{
        conversation: string;
        seq: number;
    }>;
    view(view: ViewName | string, opts?: ViewOptions): Promise<ViewPage>;
    bulk(action: "assign" | "mute" | "unmute", conversations: string[], assignee?: string | null): Promise<BulkResultFrame["results"]>;
    ping(): Promise<void>;
    /** Last `seq` seen per conversation (what `?resume=` sends). */
    positions(): Record<string, number>;
    /** Stop for good: closes the connection, rejects pending commands with "closed". */
    disconnect(): void;
}
/** A refused command: `code` is the server's error code, or "timeout" / "closed". */
export declare class SwitchboardError extends Error {
    code: string;
    ref?: string;
    field?: string;
    constructor(code: string, message: string, ref?: string, field?: string);
}
/** Decodes a JWT's payload without verifying it (the client only reads `exp`/`iat`). */
export declare function decodeJwtPayload(token: string): Record<string, unknown> | null;
/** Full-jitter exponential backoff: uniform in [0, min(max, initial·2^attempt)). */
export declare function backoffDelay(attempt: number, initialMs: number, maxMs: number, random?: () => number): number;
/** Opens a client; it connects at once and keeps reconnecting until `disconnect()` or 1008. */
export declare function connect(opts: ConnectOptions): Client;
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
export declare class Inbox {
    conversations: Map<string, ConversationItem>;
    views: Record<string, string[]>;
    /** Conversations per view: the server's `total`, adjusted by the changes seen since. */
    counts: Record<string, number>;
    unread: number;
    myUnread: number;
    /** Users online (with `presence: true`). */
    online: Set<string>;
    private client;
    private me;
    private teams;
    private msgs;
    private typingUntil;
    private handlers;
    private changed;
    private resyncViews;
    private resyncTimer;
    private off;
    private fullGen;
    constructor(client: Client);
    /** Subscribes to changes (coalesced: at most once per task). */
    on(event: "change", handler: () => void): () => void;
    /** Stops listening to the client. */
    dispose(): void;
    /** Live messages seen in a conversation, oldest first (edits and deletions applied). */
    messages(conversation: string): Message[];
    /** Loads the next page of a view (the snapshot and the re-syncs hold the first page);
     * resolves to whether more remain. */
    more(view: ViewName, limit?: number): Promise<boolean>;
    /** The items of a view, newest activity first. */
    list(view: ViewName | string): ConversationItem[];
    private onSnapshot;
    private fromView;
    private item;
    private onMessage;
    private onState;
    private onMarks;
    private editMessage;
    private onDelivery;
    private onTyping;
    private refreshTyping;
    private remove;
    private learnTeam;
    /** Recomputes the views of one conversation (docs/protocol.md, Inbox) and moves it into
     * place (newest activity first) in each. */
    private place;
    private leave;
    private enter;
    private rebuildViews;
    /** The first page of every view, applied as a snapshot (the model is replaced whole). */
    private fullResync;
    /** Asks the server for the first page of `views` (debounced). */
    private resync;
    private applyPage;
    private touch;
}
