// Test support: the real gateway binary, our own redis-server, Debian's
// Chromium through playwright-core. Every wait is bounded.
import { spawn, execFileSync } from "node:child_process";
import { mkdirSync, openSync, existsSync } from "node:fs";
import net from "node:net";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const here = path.dirname(fileURLToPath(import.meta.url));
export const repo = path.resolve(here, "../..");
export const BIN = process.env.SWITCHBOARD_BIN ?? path.join(repo, "target/debug/switchboard");
export const CHROMIUM = process.env.CHROMIUM_PATH ?? "/usr/bin/chromium";
export const SHOTS = path.join(repo, "target/console-screenshots");
const LOGS = path.join(repo, "target/console-tests");
mkdirSync(SHOTS, { recursive: true });
mkdirSync(LOGS, { recursive: true });

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Polls `fn` until it returns a truthy value, at most `ms`. */
export async function until(what, fn, ms = 5000) {
  const end = Date.now() + ms;
  let last;
  for (;;) {
    try { last = await fn(); if (last) return last; } catch (e) { last = e; }
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what} (last: ${last})`);
    await sleep(25);
  }
}

export function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.unref();
    s.on("error", reject);
    s.listen(0, "127.0.0.1", () => { const { port } = s.address(); s.close(() => resolve(port)); });
  });
}

const children = new Set();
process.on("exit", () => { for (const c of children) try { c.kill("SIGKILL"); } catch {} });

function launch(cmd, args, env, log) {
  const out = openSync(path.join(LOGS, log), "a");
  const child = spawn(cmd, args, { env, stdio: ["ignore", out, out] });
  children.add(child);
  child.on("exit", () => children.delete(child));
  return child;
}

/** A private redis-server on a free loopback port (never 6379). */
export async function startRedis() {
  const port = await freePort();
  const child = launch("redis-server",
    ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
    process.env, `redis-${port}.log`);
  await until("redis", () => new Promise((res) => {
    const s = net.connect(port, "127.0.0.1", () => { s.end(); res(true); });
    s.on("error", () => res(false));
  }));
  return { port, url: `redis://127.0.0.1:${port}/0`, stop: () => child.kill("SIGKILL") };
}

/** The environment without any SWITCHBOARD_* of the caller. */
function cleanEnv(extra) {
  const env = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith("SWITCHBOARD_")) env[k] = v;
  return { ...env, RUST_LOG: "info", SWITCHBOARD_SHUTDOWN_GRACE_SECS: "1", ...extra };
}

/** `switchboard serve` on `port` (a free one by default); `env` adds settings. */
export async function startGateway({ port, env = {} } = {}) {
  if (!existsSync(BIN)) throw new Error(`${BIN} missing: run cargo build first`);
  port ??= await freePort();
  const child = launch(BIN, ["serve"], cleanEnv({ SWITCHBOARD_LISTEN: `127.0.0.1:${port}`, ...env }),
    `gateway-${port}.log`);
  let exited = false;
  child.on("exit", () => { exited = true; });
  const base = `http://127.0.0.1:${port}`;
  await until("gateway ready", async () => {
    if (exited) throw new Error("gateway exited (see target/console-tests/)");
    const r = await fetch(`${base}/readyz`);
    return r.ok;
  }, 15000);
  return {
    port, base, child,
    kill() { child.kill("SIGKILL"); return new Promise((r) => (exited ? r() : child.on("exit", r))); },
  };
}

export async function http(base, method, p, body, token = "dev-admin", headers = {}) {
  const r = await fetch(base + p, {
    method, headers: { authorization: `Bearer ${token}`, ...headers },
    body: body === undefined ? undefined : typeof body === "string" ? body : JSON.stringify(body),
  });
  const text = await r.text();
  let json = null;
  try { json = JSON.parse(text); } catch {}
  if (!r.ok) throw new Error(`${method} ${p}: ${r.status} ${text}`);
  return json;
}

let postN = 0;
/** A customer message posted by the channel adapter (development key). */
export function customerPost(base, conversation, body) {
  return http(base, "POST", `/v1/conversations/${conversation}/messages`, { body }, "dev-adapter",
    { "idempotency-key": `ct-${process.pid}-${++postN}` });
}

/** An agent token minted by `switchboard token` (the development secret unless `secret`). */
export function cliToken(workspace, user, secret) {
  const env = cleanEnv(secret ? { SWITCHBOARD_JWT_SECRET: secret } : {});
  return execFileSync(BIN, ["token", "--workspace", workspace, "--user", user, "--ttl", "1h"],
    { env, stdio: ["ignore", "pipe", "ignore"] }).toString().trim();
}

/** Debian's Chromium, headless, with a fresh profile (playwright makes a new temp user-data-dir). */
export function browser() {
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-dev-shm-usage"],
  });
}

export async function shot(page, name) {
  await page.screenshot({ path: path.join(SHOTS, `${name}.png`) });
}

/** Errors a page logged: the console must not throw. */
export function watchErrors(page, label) {
  const errors = [];
  page.on("pageerror", (e) => errors.push(`${label}: ${e.message}`));
  page.on("console", (m) => { if (m.type() === "error") errors.push(`${label}: ${m.text()}`); });
  return errors;
}
