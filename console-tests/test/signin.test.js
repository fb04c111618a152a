// Sign-in modes: the development picker exists only on loopback with the
// development secret; with a configured secret the console takes its token
// from the host application (`?token=` or `postMessage`).
import { test, after } from "node:test";
import http_ from "node:http";
import assert from "node:assert/strict";
import { startGateway, http, cliToken, browser, shot, until } from "./support.js";

const cleanup = [];
after(async () => { for (const f of cleanup.reverse()) await f(); });
const WORLD = { users: [{ id: "ana", role: "staff" }], channels: [{ id: "sms" }], contacts: [{ id: "k1" }],
  conversations: [{ id: "v1", channel: "sms", contact: "k1", assignee: "ana" }] };

test("production mode: no dev sign-in, token by postMessage", { timeout: 30_000 }, async () => {
  const secret = "console-test-secret";
  const gw = await startGateway({ env: { SWITCHBOARD_JWT_SECRET: secret, SWITCHBOARD_ADMIN_TOKEN: "adm",
    SWITCHBOARD_ADAPTER_KEY: "adp" } });
  cleanup.push(() => gw.kill());
  await http(gw.base, "POST", "/v1/admin/import", WORLD, "adm");
  assert.equal((await fetch(`${gw.base}/console/dev/users`)).status, 404);
  assert.equal((await fetch(`${gw.base}/console/dev/token`, { method: "POST",
    body: JSON.stringify({ workspace: "w1", user: "ana" }) })).status, 404);
  const page_ = await fetch(`${gw.base}/console`);
  assert.equal(page_.headers.get("content-type"), "text/html; charset=utf-8");
  assert.match(page_.headers.get("content-security-policy"), /script-src 'self'/);
  const lib = await fetch(`${gw.base}/console/switchboard.js`);
  assert.equal(lib.headers.get("content-type"), "text/javascript; charset=utf-8");

  const b = await browser();
  cleanup.push(() => b.close());
  const page = await b.newPage({ viewport: { width: 1100, height: 700 } });
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));
  // The console alone: it waits for a token.
  await page.goto(`${gw.base}/console`);
  await page.getByRole("heading", { name: "Waiting for a token" }).waitFor({ timeout: 5000 });
  assert.equal(await page.locator("#signin").isHidden(), true);
  // Embedded by a host application of another origin, which answers the
  // console's token requests with postMessage.
  const token = cliToken("w1", "ana", secret);
  const host = http_.createServer((req, res) => {
    res.setHeader("content-type", "text/html");
    res.end(`<!doctype html><title>host</title><iframe id="c" src="${gw.base}/console" width="1000" height="600"></iframe>
<script>
  addEventListener("message", (e) => {
    if (e.data && e.data.type === "switchboard:token-request")
      e.source.postMessage({ type: "switchboard:token", token: ${JSON.stringify(token)} }, "${gw.base}");
  });
</script>`);
  });
  await new Promise((r) => host.listen(0, "127.0.0.1", r));
  cleanup.push(() => new Promise((r) => host.close(r)));
  await page.goto(`http://127.0.0.1:${host.address().port}/`);
  const frame = page.frameLocator("#c");
  await until("connected in the frame", async () => (await frame.locator("#banner").getAttribute("data-state", { timeout: 1000 })) === "open");
  await frame.locator('#conversations li[data-conv="v1"]').waitFor({ timeout: 5000 });
  await shot(page, "12-embedded-postmessage");
  assert.deepEqual(errors, []);
});

test("development mode: picker lists workspaces and users; bad users refused", { timeout: 30_000 }, async () => {
  const gw = await startGateway();
  cleanup.push(() => gw.kill());
  await http(gw.base, "POST", "/v1/admin/import", WORLD);
  const users = await (await fetch(`${gw.base}/console/dev/users`)).json();
  assert.deepEqual(users, { workspaces: ["w1"], workspace: "w1", users: [{ id: "ana", role: "staff" }] });
  const bad = await fetch(`${gw.base}/console/dev/token`, { method: "POST",
    headers: { "content-type": "application/json" }, body: JSON.stringify({ workspace: "w1", user: "nobody" }) });
  assert.equal(bad.status, 404);
  const b = await browser();
  cleanup.push(() => b.close());
  const page = await b.newPage();
  await page.goto(`${gw.base}/console`);
  await page.getByRole("heading", { name: "Sign in" }).waitFor({ timeout: 5000 });
  await page.getByRole("button", { name: "Open the inbox" }).click();
  await until("connected", async () => (await page.locator("#banner").getAttribute("data-state")) === "open");
  assert.equal(await page.locator("#me").textContent(), "ana · w1");
});
