// The console's view of the inbox, kept from the gateway's frames (no DOM).
// View membership and counts come from the gateway (`view` replies and the
// snapshot); frames update conversations, threads and unread marks at once,
// and the app asks the gateway for fresh view pages after each change.

export const VIEWS = [
  ["assigned_to_me", "Assigned to me"],
  ["unassigned", "Unassigned"],
  ["waitlist", "Team waitlist"],
  ["new", "New"],
  ["all", "All"],
  ["closed", "Closed"],
];

const SEQUENCED = new Set(["message", "status", "message_updated", "message_deleted"]);

export class Model {
  constructor() {
    this.me = null;
    this.convs = new Map();     // id → conversation record
    this.lists = {};            // view → conversation ids, newest activity first
    this.totals = {};           // view → count (from the gateway)
    this.unread = 0;
    this.myUnread = 0;
    this.threads = new Map();   // id → messages, in seq order
    this.typing = new Map();    // id → {user, until}
    this.online = new Set();    // users seen online (presence frames)
    this.duplicates = 0;        // sequenced frames seen twice (should stay 0)
    this.gaps = 0;              // seq gaps inside a conversation (should stay 0)
  }

  rec(id) {
    let r = this.convs.get(id);
    if (!r) {
      r = { id, state: null, access: "read", last: 0, lastMessageSeq: 0, lastTs: 0,
            readSeq: 0, unreadCount: 0, muted: false, preview: "" };
      this.convs.set(id, r);
    }
    return r;
  }

  /** An item of a `view` reply or of the snapshot. */
  item(it) {
    const state = typeof it.conversation === "object" ? it.conversation : null;
    const id = state ? state.id : it.conversation;
    const r = this.rec(id);
    if (state) r.state = state;
    if (!r.last) r.last = it.seq; // later positions come from the frames themselves
    r.access = it.access ?? r.access;
    r.lastTs = Math.max(r.lastTs, it.last_ts ?? 0);
    r.lastMessageSeq = Math.max(r.lastMessageSeq, it.last_message_seq ?? 0);
    if (it.marks) {
      r.readSeq = Math.max(r.readSeq, it.marks.read_seq);
      r.muted = it.marks.muted;
    }
    if (!it.unread) r.unreadCount = 0;
    else if (r.unreadCount === 0) r.unreadCount = 1; // at least one; counted exactly from here on
    return id;
  }

  /** One page of a view: `replace` for the first page. */
  page(view, items, total, replace = true) {
    const ids = items.map((it) => this.item(it));
    this.lists[view] = replace ? ids : [...(this.lists[view] ?? []), ...ids];
    this.totals[view] = total;
  }

  /** Position bookkeeping of a sequenced frame: false for a duplicate. */
  position(r, seq) {
    if (r.last && seq <= r.last) {
      this.duplicates++;
      return false;
    }
    if (r.last && seq > r.last + 1) this.gaps++;
    r.last = seq;
    return true;
  }

  toFront(id) {
    for (const v of Object.keys(this.lists)) {
      const l = this.lists[v];
      const i = l.indexOf(id);
      if (i > 0) { l.splice(i, 1); l.unshift(id); }
    }
  }

  remove(id) {
    this.convs.delete(id);
    this.threads.delete(id);
    this.typing.delete(id);
    for (const v of Object.keys(this.lists)) {
      const i = this.lists[v].indexOf(id);
      if (i >= 0) {
        this.lists[v].splice(i, 1);
        this.totals[v] = Math.max(0, (this.totals[v] ?? 1) - 1);
      }
    }
  }

  thread(id) {
    let t = this.threads.get(id);
    if (!t) { t = []; this.threads.set(id, t); }
    return t;
  }

  /** A message this console sends, shown at once as pending. */
  pending(conversation, clientId, body) {
    this.thread(conversation).push({ id: null, clientId, seq: null, body, ts: Date.now(),
      sender: { kind: "user", id: this.me }, status: "sending" });
  }

  acked(conversation, clientId, ack) {
    const m = this.thread(conversation).find((x) => x.clientId === clientId);
    if (m && m.status !== "sent") { m.status = "sent"; m.id ??= ack.messageId ?? ack.message_id; m.seq ??= ack.seq; }
  }

  failed(conversation, clientId) {
    const m = this.thread(conversation).find((x) => x.clientId === clientId);
    if (m && m.status === "sending") m.status = "failed";
  }

  /** Applies one server frame; returns whether views may have changed. */
  apply(f) {
    switch (f.type) {
      case "hello":
        this.me = f.user;
        return false;
      case "inbox":
        this.unread = f.unread; this.myUnread = f.my_unread;
        for (const [view, p] of Object.entries(f.views ?? {})) this.page(view, p.items, p.total);
        return false;
      case "message": {
        const r = this.rec(f.conversation);
        if (!this.position(r, f.seq)) return false;
        const m = f.message;
        const t = this.thread(f.conversation);
        const mine = m.sender?.kind === "user" && m.sender.id === this.me;
        const local = mine && m.client_id && t.find((x) => x.clientId === m.client_id);
        if (local) Object.assign(local, { id: m.id, seq: f.seq, status: "sent" });
        else t.push({ id: m.id, seq: f.seq, body: m.body, ts: m.ts, sender: m.sender,
                      status: mine ? "sent" : null });
        r.lastMessageSeq = f.seq; r.lastTs = m.ts; r.preview = m.body;
        if (!mine) r.unreadCount++;
        this.typing.delete(f.conversation);
        if (!this.lists.all?.includes(f.conversation)) (this.lists.all ??= []).unshift(f.conversation);
        this.toFront(f.conversation);
        return true;
      }
      case "status": {
        const r = this.rec(f.conversation);
        if (!this.position(r, f.seq)) return false;
        r.state = f.conversation_state;
        if (!this.lists.all?.includes(f.conversation)) (this.lists.all ??= []).unshift(f.conversation);
        return true;
      }
      case "access_granted": {
        const r = this.rec(f.conversation);
        r.state = f.conversation_state; r.access = f.access;
        if (!r.last) r.last = f.seq;
        if (!this.lists.all?.includes(f.conversation)) (this.lists.all ??= []).unshift(f.conversation);
        return true;
      }
      case "access_revoked":
        this.remove(f.conversation);
        return true;
      case "marks": {
        const r = this.convs.get(f.conversation);
        if (r) {
          r.readSeq = f.read_seq; r.muted = f.muted;
          if (f.read_seq >= r.lastMessageSeq) r.unreadCount = 0;
          else r.unreadCount = this.thread(f.conversation)
            .filter((m) => m.seq > f.read_seq && !(m.sender?.kind === "user" && m.sender.id === this.me)).length || 1;
        }
        this.unread = f.unread; this.myUnread = f.my_unread;
        return f.hidden || f.archived;
      }
      case "notification":
        this.unread = f.unread; this.myUnread = f.my_unread;
        return false;
      case "message_updated":
      case "message_deleted": {
        const r = this.rec(f.conversation);
        if (!this.position(r, f.seq)) return false;
        const m = this.thread(f.conversation).find((x) => x.id === f.message_id);
        if (m) { m.body = f.type === "message_deleted" ? "" : f.body; m.edited = true; m.deleted = f.type === "message_deleted"; }
        return false;
      }
      case "typing":
        this.typing.set(f.conversation, { user: f.user, until: Date.now() + 4000 });
        return false;
      case "presence":
        if (f.online) this.online.add(f.user); else this.online.delete(f.user);
        return false;
      default:
        return false;
    }
  }
}

export { SEQUENCED };
