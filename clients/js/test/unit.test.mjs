// Client logic against a scripted in-process WebSocket (no gateway): backoff, timeouts,
// close codes, the resume URL and duplicate dropping.
import { test } from "node:test";
import assert from "node:assert/strict";
import { backoffDelay, connect, decodeJwtPayload, SwitchboardError } from "../dist/index.js";
import { token, until } from "./support.mjs";

/** A fake WebSocket: each instance is recorded; the test plays the server. */
function fakeSocketClass() {
  const sockets = [];
  class FakeWS {
    constructor(url) {
      this.url = url;
      this.readyState = 0;
      this.sent = [];
      sockets.push(this);
      setTimeout(() => {
        if (this.readyState === 0) {
          this.readyState = 1;
          this.onopen?.({});
        }
      }, 0);
    }
    send(text) {
      this.sent.push(JSON.parse(text));
    }
    close(code = 1000, reason = "") {
      if (this.readyState >= 2) return;
      this.readyState = 3;
      setTimeout(() => this.onclose?.({ code, reason }), 0);
    }
    // server side
    frame(f) {
      this.onmessage?.({ data: JSON.stringify(f) });
    }
    hello(extra = {}) {
      this.frame({
        type: "hello",
        connection: sockets.indexOf(this),
        user: "ana",
        workspace: "w1",
        node: "fake",
        heartbeat_secs: 25,
        idle_timeout_secs: 60,
        max_frame_bytes: 65536,
        ...extra,
      });
    }
    serverClose(code, reason = "") {
      this.readyState = 3;
      this.onclose?.({ code, reason });
    }
    query() {
      return new URL(this.url).searchParams;
    }
  }
  return { FakeWS, sockets };
}

const msg = (conversation, seq, body = `m${seq}`) => ({
  type: "message",
  conversation,
  seq,
  message: { id: `${conversation}-${seq}`, conversation, sender: { kind: "contact", id: "k1" }, body, ts: seq },
});

test("full-jitter backoff stays within [0, min(max, initial·2^n))", () => {
  for (let n = 0; n < 12; n++) {
    const cap = Math.min(30000, 500 * 2 ** n);
    assert.equal(backoffDelay(n, 500, 30000, () => 0), 0);
    assert.ok(backoffDelay(n, 500, 30000, () => 0.999999) < cap);
    assert.ok(backoffDelay(n, 500, 30000, () => 0.999999) >= cap - 1);
  }
});

test("the JWT payload is decoded without verifying", () => {
  const p = decodeJwtPayload(token("ana", "w1", 60));
  assert.equal(p.sub, "ana");
  assert.equal(p.exp - p.iat, 60);
  assert.equal(decodeJwtPayload("not a token"), null);
});

test("resume positions, duplicate dropping, immediate reconnect on 4008 and 1001, stop on 1008", async () => {
  const { FakeWS, sockets } = fakeSocketClass();
  let tokens = 0;
  const c = connect({
    url: "ws://fake/v1/ws",
    getToken: () => (tokens++, token("ana")),
    WebSocket: FakeWS,
    backoff: { initialMs: 60000, maxMs: 60000 }, // a backoff would stall the test: only "at once" reconnects pass
  });
  const got = [];
  c.on("message", (m) => got.push(`${m.conversation}:${m.seq}`));
  const states = [];
  c.on("state", (s) => states.push(s));
  await until(() => sockets.length === 1);
  const s0 = sockets[0];
  assert.equal(s0.query().get("resume"), null, "nothing to resume on the first connection");
  s0.hello();
  assert.equal(c.state, "open");
  s0.frame(msg("a", 1));
  s0.frame(msg("a", 2));
  s0.frame(msg("b", 7));
  s0.frame(msg("a", 2)); // duplicate
  assert.deepEqual(c.positions(), { a: 2, b: 7 });

  s0.serverClose(4008, "slow consumer");
  assert.equal(c.state, "reconnecting");
  await until(() => sockets.length === 2, 1000, "an immediate reconnect after 4008");
  const s1 = sockets[1];
  assert.deepEqual(JSON.parse(s1.query().get("resume")), { a: 2, b: 7 });
  s1.hello();
  s1.frame(msg("a", 2)); // replay overlap
  s1.frame(msg("a", 3));
  s1.frame({ type: "replay_gap", conversation: "b", from_seq: 7, oldest_seq: 20 });
  s1.frame(msg("b", 20));

  s1.serverClose(1001, "going away");
  await until(() => sockets.length === 3, 1000, "an immediate reconnect after 1001");
  assert.deepEqual(JSON.parse(sockets[2].query().get("resume")), { a: 3, b: 20 });
  assert.equal(tokens, 1, "the token is reused while valid");
  sockets[2].hello();
  sockets[2].serverClose(1008, "policy");
  assert.equal(c.state, "closed");
  await new Promise((r) => setTimeout(r, 50));
  assert.equal(sockets.length, 3, "no reconnection after 1008");
  assert.deepEqual(got, ["a:1", "a:2", "b:7", "a:3", "b:20"]);
  assert.deepEqual(states, ["open", "reconnecting", "open", "reconnecting", "open", "closed"]);
  await assert.rejects(c.read("a", 3), (e) => e instanceof SwitchboardError && e.code === "closed");
});

test("4003 asks for a new token and reconnects at once", async () => {
  const { FakeWS, sockets } = fakeSocketClass();
  let tokens = 0;
  const c = connect({
    url: "ws://fake/v1/ws",
    getToken: () => token(`ana`, "w1", 3600 + ++tokens),
    WebSocket: FakeWS,
    backoff: { initialMs: 60000, maxMs: 60000 },
    refreshBeforeExpSecs: false,
  });
  await until(() => sockets.length === 1);
  sockets[0].hello();
  sockets[0].serverClose(4003, "token expired");
  await until(() => sockets.length === 2, 1000, "a reconnect after 4003");
  assert.equal(tokens, 2);
  assert.notEqual(sockets[0].query().get("token"), sockets[1].query().get("token"));
  c.disconnect();
});

test("commands: matched by ref, server codes, timeouts, queued while connecting", async () => {
  const { FakeWS, sockets } = fakeSocketClass();
  const c = connect({ url: "ws://fake/v1/ws", getToken: () => token("ana"), WebSocket: FakeWS, commandTimeoutMs: 200 });
  const errors = [];
  c.on("error", (e) => errors.push(e.code));
  await until(() => sockets.length === 1);
  const early = c.assign("v1", "ana"); // before hello: queued
  const s = sockets[0];
  s.hello();
  assert.equal(s.sent.length, 1, "the queued command goes out after hello");
  const [assign] = s.sent;
  assert.equal(assign.type, "assign");
  const sent = c.send("v1", "hi", { mentions: ["ben"] });
  const cmd = s.sent[1];
  assert.equal(cmd.type, "send");
  assert.ok(cmd.client_id, "a client_id is always sent");
  s.frame({ type: "ack", ref: cmd.ref, message_id: "m1", seq: 4, duplicate: false });
  assert.deepEqual(await sent, { messageId: "m1", seq: 4, duplicate: false, clientId: cmd.client_id });
  s.frame({ type: "error", ref: assign.ref, code: "forbidden", message: "no" });
  await assert.rejects(early, (e) => e instanceof SwitchboardError && e.code === "forbidden" && e.ref === assign.ref);
  s.frame({ type: "error", ref: null, code: "rate_limited", message: "slow down" });
  assert.deepEqual(errors, ["rate_limited"]);
  await assert.rejects(c.close("v1"), (e) => e.code === "timeout");
  c.typing("v1");
  c.typing("v1");
  c.typing("v2");
  assert.deepEqual(
    s.sent.filter((f) => f.type === "typing").map((f) => f.conversation),
    ["v1", "v2"],
    "at most one typing frame per 2 s and conversation",
  );
  c.disconnect();
});

test("a send in flight when the connection drops is sent again with its client_id", async () => {
  const { FakeWS, sockets } = fakeSocketClass();
  const c = connect({ url: "ws://fake/v1/ws", getToken: () => token("ana"), WebSocket: FakeWS });
  await until(() => sockets.length === 1);
  sockets[0].hello();
  const p = c.send("v1", "hello");
  const first = sockets[0].sent[0];
  sockets[0].serverClose(1001, "going away");
  await until(() => sockets.length === 2, 1000);
  sockets[1].hello();
  const again = sockets[1].sent[0];
  assert.equal(again.client_id, first.client_id);
  sockets[1].frame({ type: "ack", ref: again.ref, message_id: "m1", seq: 1, duplicate: true });
  assert.equal((await p).duplicate, true);
  c.disconnect();
});

test("silence past idle_timeout_secs is a dead connection: pings first, then a reconnect", async () => {
  const { FakeWS, sockets } = fakeSocketClass();
  const c = connect({
    url: "ws://fake/v1/ws",
    getToken: () => token("ana"),
    WebSocket: FakeWS,
    backoff: { initialMs: 1, maxMs: 1 },
  });
  await until(() => sockets.length === 1);
  sockets[0].hello({ heartbeat_secs: 1, idle_timeout_secs: 2 });
  await until(() => sockets[0].sent.some((f) => f.type === "ping"), 3000, "an application ping");
  await until(() => sockets.length === 2, 4000, "a reconnect after 2 s of silence");
  assert.equal(c.state, "reconnecting");
  c.disconnect();
});

test("a renewal that gets no later expiry (a cached token) keeps the connection, no reconnect storm", async () => {
  const { FakeWS, sockets } = fakeSocketClass();
  const cached = token("ana", "w1", 2); // renewal is due at once (2 s before exp)
  let calls = 0;
  const c = connect({ url: "ws://fake/v1/ws", getToken: () => (calls++, cached), WebSocket: FakeWS, backoff: { initialMs: 20, maxMs: 100 } });
  await until(() => sockets.length === 1);
  sockets[0].hello();
  await until(() => calls >= 3, 2000, "renewal asked again with backoff");
  assert.equal(sockets.length, 1, "no new connection with the same token");
  assert.equal(c.state, "open");
  assert.ok(calls < 20, `bounded by the backoff (${calls} calls)`);
  c.disconnect();
});
