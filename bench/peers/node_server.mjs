// Peer: a minimal Node.js Socket.IO 4 server with @socket.io/redis-adapter.
// No persistence, no checks. Two of these share one Redis, like the gateways.
//
// usage: node node_server.mjs PORT REDIS_URL
// events: "join" (room, ack) joins a room; "send" ({room, ...}, ack) broadcasts
// "msg" with the same payload to the room (every node, through Redis) and acks.
import { createServer } from "node:http";
import { createRequire } from "node:module";

const require = createRequire(new URL("../node/package.json", import.meta.url));
const { Server } = require("socket.io");
const { createAdapter } = require("@socket.io/redis-adapter");
const { createClient } = require("redis");

const [port, redisUrl] = [Number(process.argv[2]), process.argv[3]];
const pub = createClient({ url: redisUrl });
const sub = pub.duplicate();
pub.on("error", (e) => console.error("redis pub", e.message));
sub.on("error", (e) => console.error("redis sub", e.message));
await Promise.all([pub.connect(), sub.connect()]);

const http = createServer((req, res) => { res.writeHead(req.url === "/readyz" ? 200 : 404); res.end(); });
const io = new Server(http, { adapter: createAdapter(pub, sub), transports: ["websocket", "polling"] });
io.on("connection", (socket) => {
  socket.on("join", (room, ack) => { socket.join(room); if (typeof ack === "function") ack({ ok: true }); });
  socket.on("send", (data, ack) => {
    io.to(data.room).emit("msg", data);
    if (typeof ack === "function") ack({ ok: true });
  });
});
http.listen(port, "127.0.0.1", () => console.log(`node peer on ${port}`));
const stop = () => { io.close(); Promise.allSettled([pub.quit(), sub.quit()]).then(() => process.exit(0)); };
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
