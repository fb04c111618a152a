// A plain, fair Socket.IO fan-out server used as the peer of the Switchboard
// load test. It does what a typical Socket.IO inbox backend does, and nothing
// more:
//   - one room per conversation; on connect the server verifies the JWT
//     (HS256, claims sub/ws/exp — the same token the gateway gets) and joins the
//     socket to the rooms its user may read. The access lists are computed by
//     the harness with the library's policy oracle and passed as a JSON file,
//     so the peer does no policy work of its own (that is in its favour);
//   - `POST /v1/conversations/{id}/messages` (Bearer adapter key) assigns the
//     next per-conversation seq (in memory: the harness routes every post of a
//     conversation to the same node) and emits one `message` event to the room;
//   - several processes share one Redis through @socket.io/redis-adapter, so a
//     post on one node reaches the sockets of every node.
//
// Usage: node server.js --port 9001 --redis redis://127.0.0.1:6390
//          --access access.json --secret S --adapter-key K [--node p1]
"use strict";

const http = require("node:http");
const crypto = require("node:crypto");
const fs = require("node:fs");
const { Server } = require("socket.io");
const { createAdapter } = require("@socket.io/redis-adapter");
const { createClient } = require("redis");

function parseArgs(argv) {
  const out = {};
  for (let i = 2; i < argv.length; i += 2) {
    const k = argv[i];
    if (!k.startsWith("--") || i + 1 >= argv.length) {
      throw new Error(`bad argument ${k}`);
    }
    out[k.slice(2)] = argv[i + 1];
  }
  return out;
}

const args = parseArgs(process.argv);
const port = Number(args.port || 9001);
const node = args.node || `peer-${port}`;
const secret = args.secret || "secret";
const adapterKey = args["adapter-key"] || "adapter";
const access = JSON.parse(fs.readFileSync(args.access, "utf8"));
// user id -> { ws, rooms: [conversation ids] }
const users = access.users || {};

function b64urlDecode(s) {
  return Buffer.from(s.replace(/-/g, "+").replace(/_/g, "/"), "base64");
}

// HS256 JWT verification: returns the claims or null.
function verifyJwt(token) {
  if (typeof token !== "string") return null;
  const parts = token.split(".");
  if (parts.length !== 3) return null;
  const mac = crypto
    .createHmac("sha256", secret)
    .update(`${parts[0]}.${parts[1]}`)
    .digest();
  const sig = b64urlDecode(parts[2]);
  if (sig.length !== mac.length || !crypto.timingSafeEqual(sig, mac)) return null;
  let claims;
  try {
    const header = JSON.parse(b64urlDecode(parts[0]).toString("utf8"));
    if (header.alg !== "HS256") return null;
    claims = JSON.parse(b64urlDecode(parts[1]).toString("utf8"));
  } catch {
    return null;
  }
  if (typeof claims.exp !== "number" || claims.exp * 1000 < Date.now()) return null;
  return claims;
}

const seqs = new Map(); // conversation -> last seq (this node's conversations)
let nextId = 0;

function send(res, status, obj) {
  const body = JSON.stringify(obj);
  res.writeHead(status, {
    "content-type": "application/json",
    "content-length": Buffer.byteLength(body),
  });
  res.end(body);
}

function handleHttp(io, req, res) {
  if (req.url.startsWith("/socket.io/")) return; // socket.io's own
  if (req.method === "GET" && req.url === "/healthz") {
    return send(res, 200, { ok: true, node });
  }
  const m = /^\/v1\/conversations\/([^/?]+)\/messages(?:\?.*)?$/.exec(req.url);
  if (req.method !== "POST" || !m) {
    return send(res, 404, { error: { code: "not_found", message: req.url } });
  }
  if (req.headers.authorization !== `Bearer ${adapterKey}`) {
    return send(res, 401, { error: { code: "unauthorized", message: "adapter key" } });
  }
  const conversation = decodeURIComponent(m[1]);
  const chunks = [];
  req.on("data", (c) => chunks.push(c));
  req.on("end", () => {
    let payload;
    try {
      payload = JSON.parse(Buffer.concat(chunks).toString("utf8"));
    } catch {
      return send(res, 400, { error: { code: "bad_json", message: "not JSON" } });
    }
    if (typeof payload.body !== "string") {
      return send(res, 400, { error: { code: "bad_json", message: "body", field: "body" } });
    }
    const seq = (seqs.get(conversation) || 0) + 1;
    seqs.set(conversation, seq);
    const id = `m-${node}-${++nextId}`;
    const message = {
      id,
      conversation,
      sender: { kind: "contact", id: payload.sender || null },
      body: payload.body,
      ts: Date.now(),
    };
    io.to(conversation).emit("message", { type: "message", conversation, seq, message });
    send(res, 201, { id, conversation, seq, duplicate: false });
  });
}

async function main() {
  const pub = createClient({ url: args.redis });
  const sub = pub.duplicate();
  pub.on("error", (e) => console.error(`[${node}] redis pub: ${e.message}`));
  sub.on("error", (e) => console.error(`[${node}] redis sub: ${e.message}`));
  await Promise.all([pub.connect(), sub.connect()]);

  const server = http.createServer();
  const io = new Server(server, {
    transports: ["websocket"],
    serveClient: false,
    perMessageDeflate: false,
    adapter: createAdapter(pub, sub),
  });
  server.on("request", (req, res) => handleHttp(io, req, res));

  io.use((socket, next) => {
    const token = (socket.handshake.auth && socket.handshake.auth.token) || socket.handshake.query.token;
    const claims = verifyJwt(token);
    if (!claims) return next(new Error("unauthorized"));
    const u = users[claims.sub];
    if (!u || u.ws !== claims.ws) return next(new Error("unauthorized"));
    socket.data.user = claims.sub;
    socket.data.rooms = u.rooms;
    next();
  });
  io.on("connection", (socket) => {
    // Joined synchronously, before any later broadcast is handled.
    socket.join(socket.data.rooms);
    socket.emit("hello", {
      type: "hello",
      connection: socket.id,
      user: socket.data.user,
      node,
      conversations: socket.data.rooms.length,
    });
  });

  server.listen(port, "127.0.0.1", () => {
    console.error(`[${node}] listening on 127.0.0.1:${port}`);
  });
  const stop = () => {
    io.close();
    Promise.allSettled([pub.quit(), sub.quit()]).then(() => process.exit(0));
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
}

main().catch((e) => {
  console.error(`[${node}] fatal: ${e.stack || e}`);
  process.exit(1);
});
