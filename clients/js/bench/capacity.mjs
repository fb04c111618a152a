// How many frames per second the client and its Inbox model can take on one thread, without a
// network or gateway in the way: a scripted WebSocket hands `message` frames (as JSON text,
// as a socket would) to the client as fast as it takes them.
//
//   node bench/capacity.mjs [frames=100000] [conversations=1000]
import { connect, Inbox } from "../dist/index.js";

const [frames = 100000, conversations = 1000] = process.argv.slice(2).map(Number);
let socket;
class ScriptedWS {
  constructor() {
    socket = this;
    this.readyState = 1;
  }
  send() {}
  close() {}
}
const c = connect({ url: "ws://bench/v1/ws", getToken: () => "x.e30.y", WebSocket: ScriptedWS, snapshot: true });
const inbox = new Inbox(c);
let changes = 0;
inbox.on("change", () => changes++);
await new Promise((r) => setTimeout(r, 10));
const feed = (f) => socket.onmessage({ data: JSON.stringify(f) });
feed({ type: "hello", connection: 1, user: "ana", workspace: "w1", node: "n", heartbeat_secs: 25, idle_timeout_secs: 60, max_frame_bytes: 65536 });
const items = Array.from({ length: conversations }, (_, i) => ({
  conversation: { id: `v${i}`, kind: "customer", channel: "sms", contact: "k1", assignee: i % 3 ? null : "ana", team: null, status: "open", private: false },
  seq: 0, access: "write", last_message_seq: 0, last_ts: 0, awaiting_reply: false, unread: false,
  marks: { read_seq: 0, muted: false, hidden: false, archived: false },
}));
feed({ type: "inbox", unread: 0, my_unread: 0, views: { all: { view: "all", items, total: items.length, next_cursor: null } } });
let received = 0;
c.on("message", () => received++);
const seq = new Map();
const texts = [];
for (let i = 0; i < frames; i++) {
  const conv = `v${(i * 7919) % conversations}`;
  const s = (seq.get(conv) ?? 0) + 1;
  seq.set(conv, s);
  texts.push(JSON.stringify({
    type: "message", conversation: conv, seq: s,
    message: { id: `m${i}`, conversation: conv, sender: { kind: "contact", id: "k1" }, body: `message number ${i} with a typical length of text`, ts: 1_700_000_000_000 + i },
  }));
}
const t0 = performance.now();
for (let i = 0; i < texts.length; i++) {
  socket.onmessage({ data: texts[i] });
  if (i % 1000 === 999) await Promise.resolve(); // let the coalesced change events run
}
await new Promise((r) => setTimeout(r, 0));
const secs = (performance.now() - t0) / 1000;
console.log(`${received} message frames through client + Inbox (${conversations} conversations) in ${secs.toFixed(2)} s: ${(received / secs).toFixed(0)} frames/s on one thread (${((secs / received) * 1e6).toFixed(1)} µs per frame); ${changes} change events`);
console.log(`at 1,000 frames/s that is ${((secs / received) * 1000 * 100).toFixed(1)} % of one thread`);
c.disconnect();
