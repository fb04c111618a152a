// Benchmark: does one client (one browser tab: the client and its Inbox model) keep up with
// 1,000 frames/s? A worker thread posts customer messages through the adapter API at a fixed
// rate, spread over many conversations, to a gateway this script starts; the main thread runs
// the client and measures, per message, the lag from the gateway's timestamp (`message.ts`)
// to the moment the client's handler (after the Inbox model) saw it.
//
//   node --experimental-websocket bench/throughput.mjs [rate=1000] [seconds=10] [conversations=200]
//
// Gateway binary: $SWITCHBOARD_BIN, else ../../target/debug/switchboard (a release build,
// `cargo build --release` and SWITCHBOARD_BIN=target/release/switchboard, measures the client
// rather than the debug gateway). Not a test: it prints the figures.
import { Worker, isMainThread, parentPort, workerData } from "node:worker_threads";
import { fileURLToPath } from "node:url";

if (!isMainThread) {
  // ---------------------------------------------------------------- load generator
  const { base, key, rate, seconds, conversations } = workerData;
  const total = rate * seconds;
  const start = performance.now();
  let sent = 0;
  let failed = 0;
  let inflight = 0;
  const maxInflight = 64;
  await new Promise((done) => {
    const pump = () => {
      const due = Math.min(total, Math.floor(((performance.now() - start) / 1000) * rate));
      while (sent < due && inflight < maxInflight) {
        const i = sent++;
        inflight++;
        fetch(`${base}/v1/conversations/b${i % conversations}/messages`, {
          method: "POST",
          headers: { authorization: `Bearer ${key}`, "content-type": "application/json", "idempotency-key": `k${i}` },
          body: JSON.stringify({ body: `m${i}` }),
        })
          .then((r) => {
            if (r.status >= 300) failed++;
            return r.arrayBuffer();
          })
          .catch(() => failed++)
          .finally(() => {
            inflight--;
            if (sent >= total && inflight === 0) done();
          });
      }
      if (sent < total) setTimeout(pump, 1);
    };
    pump();
  });
  parentPort.postMessage({ sent, failed, secs: (performance.now() - start) / 1000 });
} else {
  // ---------------------------------------------------------------- client under test
  const { connect, Inbox } = await import("../dist/index.js");
  const { Gateway, token, until } = await import("../test/support.mjs");
  const [rate = 1000, seconds = 10, conversations = 200] = process.argv.slice(2).map(Number);
  const g = await Gateway.start({ SWITCHBOARD_HISTORY_LEN: "100" });
  const convs = Array.from({ length: conversations }, (_, i) => ({ id: `b${i}`, channel: "sms", contact: "k1" }));
  await g.import({ users: [{ id: "ana", role: "admin" }], channels: [{ id: "sms" }], contacts: [{ id: "k1" }], conversations: convs });

  const c = connect({ url: g.wsUrl, getToken: () => token("ana"), snapshot: true });
  const inbox = new Inbox(c);
  let renders = 0;
  inbox.on("change", () => renders++); // what a UI would re-render on
  const lags = [];
  let received = 0;
  let dups = 0;
  const disconnects = [];
  const last = new Map();
  c.on("disconnect", (d) => disconnects.push(d.code));
  c.on("message", (m) => {
    received++;
    const prev = last.get(m.conversation) ?? 0;
    if (m.seq <= prev) dups++;
    last.set(m.conversation, m.seq);
    lags.push(Date.now() - m.message.ts);
  });
  await until(() => c.state === "open" && inbox.conversations.size > 0, 10000, "connected");

  // Event-loop delay of the client's thread while it works.
  const { monitorEventLoopDelay } = await import("node:perf_hooks");
  const loop = monitorEventLoopDelay({ resolution: 5 });
  loop.enable();
  const elu0 = performance.eventLoopUtilization();
  const t0 = performance.now();
  const worker = new Worker(fileURLToPath(import.meta.url), {
    workerData: { base: g.base, key: "js-test-adapter", rate, seconds, conversations },
  });
  const load = await new Promise((res, rej) => {
    worker.once("message", res);
    worker.once("error", rej);
  });
  const expected = load.sent - load.failed;
  await until(() => received >= expected, 30000, "every message").catch(() => {});
  const wall = (performance.now() - t0) / 1000;
  const elu = performance.eventLoopUtilization(elu0);
  loop.disable();

  lags.sort((x, y) => x - y);
  const q = (p) => lags[Math.min(lags.length - 1, Math.floor(p * lags.length))] ?? NaN;
  const ms = (ns) => (ns / 1e6).toFixed(1);
  console.log(`posted   ${load.sent} messages in ${load.secs.toFixed(2)} s = ${(load.sent / load.secs).toFixed(0)}/s (${load.failed} failed), over ${conversations} conversations`);
  console.log(`received ${received} message frames (${dups} duplicates, disconnects: ${disconnects.length ? disconnects.join(",") : "none"}) in ${wall.toFixed(2)} s`);
  console.log(`lag gateway ts → client handler: p50 ${q(0.5)} ms, p99 ${q(0.99)} ms, max ${lags.at(-1)} ms`);
  console.log(`client thread: event-loop delay p99 ${ms(loop.percentile(99))} ms, max ${ms(loop.max)} ms; busy ${(elu.utilization * 100).toFixed(0)} % of the time (client + Inbox model; the load generator runs in a worker thread)`);
  console.log(`inbox: ${inbox.conversations.size} conversations, ${inbox.views.all.length} in "all", ${renders} change events`);
  await worker.terminate();
  c.disconnect();
  await g.stop();
  process.exit(received >= expected && dups === 0 ? 0 : 1);
}
