// Reconnection against the real gateway: a node killed with SIGKILL and restarted (two
// nodes on a private Redis, so state survives), token expiry (4003) and renewal, and a
// frozen node (SIGSTOP) detected by silence.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { connect, Inbox } from "../dist/index.js";
import { Gateway, proxy, Redis, record, sleep, token, until, world } from "./support.mjs";

let redis;
let a; // the node the client talks to (killed and restarted)
let b; // the node the adapter posts to
const clients = [];
before(async () => {
  redis = await Redis.start();
  const env = { SWITCHBOARD_REDIS_URL: redis.url, SWITCHBOARD_HEARTBEAT_SECS: "1", SWITCHBOARD_IDLE_TIMEOUT_SECS: "3" };
  a = await Gateway.start(env);
  b = await Gateway.start(env);
  await a.import(world());
  // Both nodes see the world (B learns it through Redis).
  await until(
    async () => {
      try {
        await b.admin("GET", "/v1/admin/conversations/anas");
        return true;
      } catch {
        return false;
      }
    },
    5000,
    "the world on node B",
  );
});
after(async () => {
  for (const c of clients) c.disconnect();
  await a?.stop();
  await b?.stop();
  await redis?.stop();
});

function client(user, opts = {}) {
  const c = connect({
    url: a.wsUrl,
    getToken: () => token(user),
    backoff: { initialMs: 50, maxMs: 400 },
    commandTimeoutMs: 5000,
    connectTimeoutMs: 2000,
    ...opts,
  });
  clients.push(c);
  return c;
}

/** The messages of one conversation as the client delivered them. */
function deliveries(c, conversation) {
  const got = [];
  c.on("message", (m) => {
    if (m.conversation === conversation) got.push({ seq: m.seq, body: m.message.body });
  });
  return got;
}

/** Every seq once, in order, with no hole, and the expected bodies in order. */
function assertExact(got, bodies) {
  const seqs = got.map((m) => m.seq);
  for (let i = 1; i < seqs.length; i++) assert.equal(seqs[i], seqs[i - 1] + 1, `seq ${seqs[i - 1]} then ${seqs[i]}`);
  assert.deepEqual(
    got.map((m) => m.body).filter((b) => bodies.includes(b)),
    bodies,
  );
}

test("a node killed (SIGKILL) and restarted: the client resumes with no gap and no duplicate", async () => {
  const c = client("ana", { snapshot: true });
  const inbox = new Inbox(c);
  const got = deliveries(c, "anas");
  const states = record(c, ["state"]).state;
  await until(() => c.state === "open", 5000, "open");
  const bodies = [];
  const post = async (node, n, tag) => {
    for (let i = 0; i < n; i++) {
      const body = `${tag}-${i}`;
      bodies.push(body);
      await node.post("anas", body);
    }
  };
  await post(b, 10, "before");
  await until(() => got.length >= 10, 5000, "live messages");

  await a.kill("SIGKILL");
  await post(b, 25, "while-down"); // stored through node B while A is gone
  await until(() => c.state === "reconnecting" || c.state === "offline", 5000, "noticed the loss");
  await a.restart();
  await until(() => c.state === "open", 10000, "reconnected");
  await post(b, 10, "after");
  await until(() => got.filter((m) => bodies.includes(m.body)).length >= bodies.length, 10000, "every message");
  await sleep(100); // anything doubled would be here by now
  assertExact(got, bodies);
  assert.equal(new Set(got.map((m) => m.seq)).size, got.length, "no duplicate");
  assert.ok(states.includes("reconnecting"));
  assert.equal(states.at(-1), "open");
  assert.deepEqual(
    inbox.messages("anas").map((m) => m.body).filter((x) => bodies.includes(x)),
    bodies,
  );
  assert.equal(c.positions().anas, got.at(-1).seq);
  inbox.dispose();
  c.disconnect();
});

test("a node killed: the client reconnects to another node and resumes there", async () => {
  // The client reaches the nodes through a switchable proxy (a load balancer).
  const lb = await proxy(a.port);
  const c = client("ana", { url: `ws://127.0.0.1:${lb.port}/v1/ws` });
  const got = deliveries(c, "anas");
  try {
    await until(() => c.state === "open", 5000, "open");
    assert.equal(c.hello.node, `js-${a.port}`);
    const bodies = [];
    for (let i = 0; i < 5; i++) bodies.push((await b.post("anas", `x-before-${i}`), `x-before-${i}`));
    await until(() => got.length >= 5, 5000, "live messages");
    lb.target = b.port;
    await a.kill("SIGKILL");
    for (let i = 0; i < 15; i++) bodies.push((await b.post("anas", `x-down-${i}`), `x-down-${i}`));
    await until(() => c.state === "open" && c.hello.node === `js-${b.port}`, 10000, "open on node B");
    for (let i = 0; i < 5; i++) bodies.push((await b.post("anas", `x-after-${i}`), `x-after-${i}`));
    await until(() => got.filter((m) => bodies.includes(m.body)).length >= bodies.length, 10000, "every message");
    await sleep(100);
    assertExact(got, bodies);
  } finally {
    c.disconnect();
    await lb.close();
    await a.restart();
  }
});

test("token expiry: 4003, a new token from getToken, nothing missed", async () => {
  let calls = 0;
  const c = client("ana", {
    // The first token lives 3 s; renewal before exp is off, so the server closes with 4003.
    getToken: () => token("ana", "w1", ++calls === 1 ? 3 : 3600),
    refreshBeforeExpSecs: false,
  });
  const got = deliveries(c, "fresh");
  const closes = record(c, ["disconnect"]).disconnect;
  await until(() => c.state === "open", 5000, "open");
  const bodies = [];
  const deadline = Date.now() + 4000;
  for (let i = 0; Date.now() < deadline; i++) {
    bodies.push(`t-${i}`);
    await b.post("fresh", `t-${i}`);
    await sleep(50);
  }
  await until(() => closes.some((d) => d.code === 4003), 5000, "4003");
  await until(() => got.filter((m) => bodies.includes(m.body)).length >= bodies.length, 5000, "every message");
  assertExact(got, bodies);
  assert.equal(calls, 2, "one new token after 4003");
  assert.equal(c.state, "open");
  c.disconnect();
});

test("token renewal before exp: make-before-break, no 4003, no duplicate", async () => {
  let calls = 0;
  const c = client("ana", { getToken: () => (calls++, token("ana", "w1", 3)) });
  const got = deliveries(c, "anas");
  const seen = record(c, ["disconnect", "state"]);
  await until(() => c.state === "open", 5000, "open");
  const bodies = [];
  const deadline = Date.now() + 3500;
  for (let i = 0; Date.now() < deadline; i++) {
    bodies.push(`r-${i}`);
    await b.post("anas", `r-${i}`);
    await sleep(25);
  }
  await until(() => got.filter((m) => bodies.includes(m.body)).length >= bodies.length, 5000, "every message");
  await sleep(100);
  assertExact(got, bodies);
  assert.ok(calls >= 3, `renewed (${calls} tokens)`);
  assert.deepEqual(seen.disconnect, [], "the server never closed the connection");
  assert.deepEqual(seen.state, ["open"], "the state stayed open after the first connection");
  c.disconnect();
});

test("a frozen node (SIGSTOP): silence past idle_timeout_secs, reconnect when it thaws", async () => {
  const c = client("ben");
  const states = record(c, ["state"]).state;
  await until(() => c.state === "open", 5000, "open");
  assert.equal(c.hello.idle_timeout_secs, 3);
  a.child.kill("SIGSTOP");
  try {
    await until(() => c.state !== "open", 6000, "the silence noticed");
  } finally {
    a.child.kill("SIGCONT");
  }
  await until(() => c.state === "open", 10000, "open again");
  assert.ok(states.includes("reconnecting"));
  await c.ping();
  c.disconnect();
});
