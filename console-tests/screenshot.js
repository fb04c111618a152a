// Regenerates docs/console.png, the README's screenshot: the world of the
// README's commands, a few messages, agent "ana" with a conversation open.
// Usage (after cargo build): node console-tests/screenshot.js
import { readFileSync } from "node:fs";
import path from "node:path";
import { repo, startGateway, http, customerPost, browser, until } from "./test/support.js";

const gw = await startGateway();
try {
  await http(gw.base, "POST", "/v1/admin/import", readFileSync(path.join(repo, "tests/worlds/01_role_scopes.json"), "utf8"));
  await http(gw.base, "POST", "/v1/admin/conversations/anas/private", { private: true });
  await customerPost(gw.base, "fresh", "Do you ship to Canada?");
  const b = await browser();
  try {
    const page = await b.newPage({ viewport: { width: 1100, height: 560 } });
    await page.goto(`${gw.base}/console`);
    await page.getByLabel("User").selectOption("ana");
    await page.getByRole("button", { name: "Open the inbox" }).click();
    await until("connected", async () => (await page.locator("#banner").getAttribute("data-state")) === "open");
    await customerPost(gw.base, "anas", "Hi, my order #1042 has not arrived yet.");
    await customerPost(gw.base, "anas", "It was due on Monday.");
    await page.locator('#conversations li[data-conv="anas"]').click();
    await page.getByLabel("Reply").fill("Sorry about that! Let me check with the carrier.");
    await page.getByLabel("Reply").press("Enter");
    await customerPost(gw.base, "fresh", "Also: what are your opening hours?");
    await until("sent", async () => (await page.locator("#messages .tick").last().getAttribute("aria-label")) === "sent");
    await page.getByLabel("Reply").fill("");
    await page.waitForTimeout(600);
    await page.screenshot({ path: path.join(repo, "docs/console.png") });
  } finally {
    await b.close();
  }
} finally {
  await gw.kill();
}
console.log("docs/console.png written");
