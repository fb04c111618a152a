// Harness for the Node tests: the real `switchboard` binary (and, where a restart must keep
// state, a private redis-server), each on a free loopback port. Every wait is bounded.
import { spawn } from "node:child_process";
import { createHmac, randomUUID } from "node:crypto";
import { existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
export const PKG = resolve(here, "..");
/** The gateway binary: $SWITCHBOARD_BIN, else the workspace's debug build. */
export const BIN = process.env.SWITCHBOARD_BIN
  ? resolve(process.env.SWITCHBOARD_BIN)
  : resolve(PKG, "../../target/debug/switchboard");

export const JWT_SECRET = "js-test-secret";
export const ADMIN_TOKEN = "js-test-admin";
export const ADAPTER_KEY = "js-test-adapter";

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** `promise`, or undefined after `ms` (the timer does not keep the process alive). */
export function within(promise, ms) {
  let t;
  const timeout = new Promise((r) => {
    t = setTimeout(r, ms);
    t.unref?.();
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(t));
}

/** Waits until `pred()` is truthy (polling every 10 ms), at most `ms`. */
export async function until(pred, ms = 5000, what = "condition") {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await pred();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(10);
  }
}

export function freePort() {
  return new Promise((res, rej) => {
    const s = createServer();
    s.on("error", rej);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => res(port));
    });
  });
}

const b64url = (s) => Buffer.from(s).toString("base64url");

/** An HS256 agent token; `ttl` in seconds. */
export function token(user, ws = "w1", ttl = 3600, secret = JWT_SECRET) {
  const now = Math.floor(Date.now() / 1000);
  const h = b64url(JSON.stringify({ alg: "HS256", typ: "JWT" }));
  const p = b64url(JSON.stringify({ sub: user, ws, iat: now, exp: now + ttl }));
  const sig = createHmac("sha256", secret).update(`${h}.${p}`).digest("base64url");
  return `${h}.${p}.${sig}`;
}

const tmpRoot = () => {
  const base = resolve(PKG, "../../target/tmp");
  try {
    mkdirSync(base, { recursive: true });
    return base;
  } catch {
    return tmpdir();
  }
};

/** A `switchboard serve`; `restart()` starts it again on the same port (same Redis). */
export class Gateway {
  constructor(env = {}) {
    this.env = env;
    this.port = 0;
    this.child = null;
  }

  static async start(env = {}) {
    if (!existsSync(BIN)) {
      throw new Error(`no gateway binary at ${BIN}: run \`cargo build\` first (or set SWITCHBOARD_BIN)`);
    }
    const g = new Gateway(env);
    let last;
    for (let i = 0; i < 5; i++) {
      g.port = await freePort();
      try {
        await g.spawn();
        return g;
      } catch (e) {
        last = e;
      }
    }
    throw last;
  }

  get base() {
    return `http://127.0.0.1:${this.port}`;
  }
  get wsUrl() {
    return `ws://127.0.0.1:${this.port}/v1/ws`;
  }

  async spawn() {
    const env = {};
    for (const [k, v] of Object.entries(process.env)) if (!k.startsWith("SWITCHBOARD_")) env[k] = v;
    Object.assign(env, {
      SWITCHBOARD_LISTEN: `127.0.0.1:${this.port}`,
      SWITCHBOARD_JWT_SECRET: JWT_SECRET,
      SWITCHBOARD_ADMIN_TOKEN: ADMIN_TOKEN,
      SWITCHBOARD_ADAPTER_KEY: ADAPTER_KEY,
      SWITCHBOARD_NODE_ID: `js-${this.port}`,
      SWITCHBOARD_SHUTDOWN_GRACE_SECS: "2",
      RUST_LOG: "warn",
      ...this.env,
    });
    this.log = join(tmpRoot(), `switchboard-js-${this.port}.log`);
    const out = openSync(this.log, "a");
    const child = spawn(BIN, ["serve"], { env, stdio: ["ignore", out, out] });
    this.child = child;
    let exited = null;
    child.once("exit", (code, sig) => (exited = `exited with ${code ?? sig}`));
    const deadline = Date.now() + 15000;
    for (;;) {
      if (exited) throw new Error(`gateway ${exited} before ready:\n${this.logText()}`);
      try {
        const r = await fetch(`${this.base}/readyz`);
        if (r.status === 200) return;
      } catch {
        /* not yet */
      }
      if (Date.now() > deadline) {
        child.kill("SIGKILL");
        throw new Error(`gateway not ready within 15 s:\n${this.logText()}`);
      }
      await sleep(20);
    }
  }

  logText() {
    try {
      return readFileSync(this.log, "utf8").slice(-4000);
    } catch {
      return "";
    }
  }

  /** Kills the process with `signal` and waits for it to exit. */
  async kill(signal = "SIGKILL") {
    const c = this.child;
    if (!c || c.exitCode !== null || c.signalCode !== null) return;
    const done = new Promise((r) => c.once("exit", r));
    c.kill(signal);
    await within(done, 10000);
  }

  async restart() {
    await this.spawn();
  }

  async stop() {
    await this.kill("SIGKILL");
  }

  async http(method, path, body, key = ADMIN_TOKEN, headers = {}) {
    const r = await fetch(`${this.base}${path}`, {
      method,
      headers: { authorization: `Bearer ${key}`, "content-type": "application/json", ...headers },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await r.text();
    let json = null;
    try {
      json = text ? JSON.parse(text) : null;
    } catch {
      json = text;
    }
    if (r.status >= 300) {
      const e = new Error(`${method} ${path}: ${r.status} ${text}`);
      e.status = r.status;
      e.body = json;
      throw e;
    }
    return json;
  }

  admin(method, path, body) {
    return this.http(method, path, body, ADMIN_TOKEN);
  }

  import(world, mode = "upsert") {
    return this.admin("POST", `/v1/admin/import?mode=${mode}`, world);
  }

  /** A customer message through the adapter API. */
  post(conversation, body, key = randomUUID()) {
    return this.http("POST", `/v1/conversations/${encodeURIComponent(conversation)}/messages`, { body }, ADAPTER_KEY, {
      "idempotency-key": key,
    });
  }
}

/** A private redis-server on a free port (no persistence: it outlives the gateway restarts). */
export class Redis {
  static async start() {
    const bin = process.env.REDIS_SERVER || "redis-server";
    const r = new Redis();
    r.dir = mkdtempSync(join(tmpRoot(), "redis-js-"));
    let last;
    for (let i = 0; i < 5; i++) {
      r.port = await freePort();
      r.child = spawn(bin, ["--port", String(r.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", r.dir], {
        stdio: "ignore",
      });
      let exited = false;
      r.child.once("exit", () => (exited = true));
      r.child.once("error", (e) => {
        exited = true;
        last = e;
      });
      try {
        await until(() => exited || r.pings(), 5000, "redis-server");
        if (!exited) return r;
      } catch (e) {
        last = e;
        r.child.kill("SIGKILL");
      }
    }
    throw new Error(`redis-server did not start (apt-get install redis-server): ${last}`);
  }

  get url() {
    return `redis://127.0.0.1:${this.port}/0`;
  }

  /** Whether it answers PING (over TCP: no redis-cli needed). */
  pings() {
    return pingTcp(this.port);
  }

  async stop() {
    const c = this.child;
    if (c && c.exitCode === null && c.signalCode === null) {
      const done = new Promise((r) => c.once("exit", r));
      c.kill("SIGKILL");
      await within(done, 5000);
    }
    rmSync(this.dir, { recursive: true, force: true });
  }
}

async function pingTcp(port) {
  const { createConnection } = await import("node:net");
  return new Promise((res) => {
    const s = createConnection({ host: "127.0.0.1", port });
    let got = "";
    const done = (v) => {
      s.destroy();
      res(v);
    };
    s.setTimeout(500, () => done(false));
    s.on("error", () => done(false));
    s.on("connect", () => s.write("PING\r\n"));
    s.on("data", (d) => {
      got += d;
      if (got.includes("\r\n")) done(got.startsWith("+PONG"));
    });
  });
}

/** Collects a client's events by name. */
export function record(client, names) {
  const seen = {};
  for (const n of names) {
    seen[n] = [];
    client.on(n, (e) => seen[n].push(e));
  }
  return seen;
}

/** A small world: an admin, two agents, conversations of each, one unassigned. */
export function world(extra = {}) {
  return {
    users: [
      { id: "boss", role: "admin" },
      { id: "ana", role: "staff", teams: ["sales"] },
      { id: "ben", role: "staff" },
    ],
    channels: [{ id: "sms" }],
    contacts: [{ id: "k1" }],
    conversations: [
      { id: "fresh", channel: "sms", contact: "k1" },
      { id: "anas", channel: "sms", contact: "k1", assignee: "ana" },
      { id: "bens", channel: "sms", contact: "k1", assignee: "ben" },
    ],
    ...extra,
  };
}

/** A TCP proxy on a free loopback port whose backend can be switched (a load balancer
 * sending the next connection to another node). */
export async function proxy(targetPort) {
  const { createConnection } = await import("node:net");
  const sockets = new Set();
  const p = { target: targetPort, port: 0 };
  const server = createServer((down) => {
    const up = createConnection({ host: "127.0.0.1", port: p.target });
    for (const s of [down, up]) {
      sockets.add(s);
      s.on("close", () => sockets.delete(s));
      s.on("error", () => {
        down.destroy();
        up.destroy();
      });
    }
    down.pipe(up);
    up.pipe(down);
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  p.port = server.address().port;
  /** Drops every connection through the proxy (the backend sees them close). */
  p.cut = () => {
    for (const s of sockets) s.destroy();
  };
  p.close = () =>
    new Promise((r) => {
      for (const s of sockets) s.destroy();
      server.close(() => r());
    });
  return p;
}
