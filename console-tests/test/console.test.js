// Two agents in two browser contexts and an admin over HTTP, against a
// Redis-backed gateway that is killed and restarted mid-test.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import path from "node:path";
import { startRedis, startGateway, http, customerPost, cliToken, browser, shot, until,
         watchErrors, sleep } from "./support.js";

const world = readFileSync(path.join(import.meta.dirname, "world.json"), "utf8");
const cleanup = [];
after(async () => { for (const f of cleanup.reverse()) await f(); });

const row = (page, id) => page.locator(`#conversations li[data-conv="${id}"]`);
const threadBodies = (page) => page.locator("#messages .body").allTextContents();
const model = (page, expr) => page.evaluate(expr);

test("two agents, live access, private, restart, unread", { timeout: 90_000 }, async () => {
  const redis = await startRedis();
  cleanup.push(() => redis.stop());
  const env = { SWITCHBOARD_REDIS_URL: redis.url, SWITCHBOARD_NODE_ID: "console-node" };
  let gw = await startGateway({ env });
  cleanup.push(() => gw.kill());
  await http(gw.base, "POST", "/v1/admin/import", world);

  const b = await browser();
  cleanup.push(() => b.close());
  const ctxA = await b.newContext({ viewport: { width: 1280, height: 760 } });
  const ctxB = await b.newContext({ viewport: { width: 1280, height: 760 } });
  const ana = await ctxA.newPage();
  const ben = await ctxB.newPage();
  const errA = watchErrors(ana, "ana"), errB = watchErrors(ben, "ben");

  // Ana signs in with the development picker.
  await ana.goto(`${gw.base}/console`);
  await ana.getByLabel("User").selectOption("ana");
  await shot(ana, "01-dev-signin");
  await ana.getByRole("button", { name: "Open the inbox" }).click();
  await until("ana connected", async () => (await ana.locator("#banner").getAttribute("data-state")) === "open");
  await row(ana, "anas").waitFor({ timeout: 5000 });
  await row(ana, "shared").waitFor({ timeout: 5000 });

  // Ben comes with a token from the host application (minted by `switchboard token`).
  await ben.goto(`${gw.base}/console?token=${cliToken("w1", "ben")}`);
  await until("ben connected", async () => (await ben.locator("#banner").getAttribute("data-state")) === "open");
  await row(ben, "bens").waitFor({ timeout: 5000 });
  await row(ben, "shared").waitFor({ timeout: 5000 });
  assert.equal(await row(ben, "anas").count(), 0, "ben never lists anas");
  assert.ok(!new URL(ben.url()).search.includes("token"), "the token is taken out of the address bar");
  await shot(ana, "02-ana-inbox");
  await shot(ben, "02-ben-inbox");

  // A customer message reaches ana within a second, never ben.
  const t0 = Date.now();
  await customerPost(gw.base, "anas", "Hello from the customer");
  await until("message in ana's list", async () =>
    (await row(ana, "anas").locator(".preview").textContent()) === "Hello from the customer", 1000);
  const latency = Date.now() - t0;
  console.log(`# customer message visible in ana's console after ${latency} ms`);
  assert.equal(await row(ana, "anas").locator(".badge").textContent(), "1");
  // Ben has seen everything up to a later marker of a conversation he reads, and not the message.
  await customerPost(gw.base, "shared", "marker one");
  await until("marker in ben's list", async () =>
    (await row(ben, "shared").locator(".preview").textContent()) === "marker one");
  assert.equal(await model(ben, () => window.__console.model.convs.has("anas")), false);
  assert.ok(!(await ben.content()).includes("Hello from the customer"), "ben never sees ana's customer");
  await shot(ana, "03-ana-message-arrived");
  await shot(ben, "03-ben-not-leaked");

  // Unread badges follow `read`: a second message makes 2, opening the conversation clears them.
  await customerPost(gw.base, "anas", "Are you there?");
  await until("badge 2", async () => (await row(ana, "anas").locator(".badge").textContent().catch(() => "")) === "2");
  await shot(ana, "04-ana-unread-2");
  await row(ana, "anas").click();
  await until("badge cleared", async () => (await row(ana, "anas").locator(".badge").count()) === 0);
  assert.deepEqual(await threadBodies(ana), ["Hello from the customer", "Are you there?"]);
  const readSeq = await model(ana, () => window.__console.model.convs.get("anas").readSeq);
  assert.ok(readSeq >= 2, `read mark stored (${readSeq})`);
  // Ana replies with the composer: pending, then acknowledged.
  await ana.getByLabel("Reply").fill("Yes, how can I help?");
  await ana.getByLabel("Reply").press("Enter");
  await until("reply acknowledged", async () =>
    (await ana.locator("#messages .msg.mine .tick").last().getAttribute("aria-label")) === "sent");
  await shot(ana, "05-ana-read-and-replied");

  // Typing: ben has "shared" open, ana types there.
  await row(ben, "shared").click();
  await row(ana, "shared").click();
  await ana.getByLabel("Reply").pressSequentially("typing", { delay: 10 });
  await until("typing indicator", async () =>
    (await ben.locator("#typing").textContent()) === "ana is typing…");
  await shot(ben, "06-ben-sees-typing");
  await ana.getByLabel("Reply").fill("");

  // The admin makes "shared" private: ben loses it live, ana keeps it with a lock.
  const allBefore = Number(await ben.locator('#views button[data-view="all"] .count').textContent());
  const t1 = Date.now();
  await http(gw.base, "POST", "/v1/admin/conversations/shared/private", { private: true });
  await until("shared gone from ben", async () => (await row(ben, "shared").count()) === 0, 1000);
  console.log(`# private conversation gone from ben's console after ${Date.now() - t1} ms`);
  await until("ana's lock", async () => (await row(ana, "shared").locator(".lock").count()) === 1);
  await until("ben's count", async () =>
    Number(await ben.locator('#views button[data-view="all"] .count').textContent()) === allBefore - 1);
  assert.equal(await ben.locator("#thread-title").textContent(), "No conversation open");
  await shot(ana, "07-ana-private-lock");
  await shot(ben, "07-ben-private-removed");

  // Kill the node: both show "reconnecting"; a restart on the same Redis resumes.
  await row(ana, "anas").click();
  await gw.kill();
  await until("ana reconnecting", async () =>
    ["reconnecting", "offline"].includes(await ana.locator("#banner").getAttribute("data-state")));
  assert.match(await ana.locator("#banner").textContent(), /Reconnecting|Offline/);
  await shot(ana, "08-ana-reconnecting");
  gw = await startGateway({ port: gw.port, env });
  // Posted as soon as the node is back: before or after the consoles reconnect,
  // each must appear exactly once.
  await customerPost(gw.base, "anas", "After the restart 1");
  await customerPost(gw.base, "anas", "After the restart 2");
  await until("ana connected again", async () =>
    (await ana.locator("#banner").getAttribute("data-state")) === "open", 15000);
  await until("missed messages", async () => (await threadBodies(ana)).length >= 5, 5000);
  await customerPost(gw.base, "anas", "Live again");
  await until("live message", async () => (await threadBodies(ana)).includes("Live again"));
  await sleep(200);
  assert.deepEqual(await threadBodies(ana), ["Hello from the customer", "Are you there?",
    "Yes, how can I help?", "After the restart 1", "After the restart 2", "Live again"]);
  const counters = await model(ana, () => ({ d: window.__console.model.duplicates, g: window.__console.model.gaps }));
  assert.deepEqual(counters, { d: 0, g: 0 }, "no duplicate, no gap");
  await until("ben connected again", async () =>
    (await ben.locator("#banner").getAttribute("data-state")) === "open", 15000);
  assert.equal(await row(ben, "anas").count(), 0);
  assert.equal(await row(ben, "shared").count(), 0);
  await shot(ana, "09-ana-resumed");
  await shot(ben, "09-ben-resumed");

  // Unread in the other direction: ben gets a message in "bens" while it is not open.
  await customerPost(gw.base, "bens", "Hi Ben");
  await until("ben's badge", async () => (await row(ben, "bens").locator(".badge").textContent().catch(() => "")) === "1");
  await row(ben, "bens").focus().catch(() => {});
  await ben.locator("#conversations").focus();
  // Keyboard: the listbox opens the active row with Enter.
  const idx = Number(await row(ben, "bens").getAttribute("data-index"));
  await ben.keyboard.press("Home");
  for (let i = 0; i < idx; i++) await ben.keyboard.press("ArrowDown");
  await ben.keyboard.press("Enter");
  await until("ben's badge cleared", async () => (await row(ben, "bens").locator(".badge").count()) === 0);
  assert.equal(await ben.locator("#thread-title").textContent(), "bens · k2");
  await shot(ben, "10-ben-keyboard-read");

  // The browser logs the refused reconnects while the node was down; nothing else.
  const unexpected = [...errA, ...errB].filter((e) =>
    !/WebSocket connection to .* failed|ERR_CONNECTION_REFUSED/.test(e));
  assert.deepEqual(unexpected, []);
});
