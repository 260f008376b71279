// A Socket.IO client session driven by the end-to-end tests, using the official
// JavaScript client. Prints one JSON object per line: connect_error, ready, ack,
// message:created, transport (after an upgrade), done.
//
// usage: node client.mjs URL TOKEN websocket|polling [--send CHANNEL CONTENT NONCE] [--expect N] [--timeout MS]
import { io } from "socket.io-client";

const [url, token, mode, ...rest] = process.argv.slice(2);
const opts = { send: null, expect: 0, timeout: 10000 };
for (let i = 0; i < rest.length; i++) {
  if (rest[i] === "--send") { opts.send = rest.slice(i + 1, i + 4); i += 3; }
  else if (rest[i] === "--expect") { opts.expect = Number(rest[++i]); }
  else if (rest[i] === "--timeout") { opts.timeout = Number(rest[++i]); }
}
const out = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");
const transports = mode === "websocket" ? ["websocket"] : ["polling", "websocket"];
const socket = io(url, { auth: { token }, transports, reconnection: false });
let received = 0;
let acked = opts.send === null;

const finish = (code) => {
  out({ event: "done", transport: socket.io.engine ? socket.io.engine.transport.name : null });
  socket.close();
  process.exit(code);
};
setTimeout(() => finish(2), opts.timeout);

socket.on("connect_error", (err) => { out({ event: "connect_error", message: err.message, data: err.data }); finish(0); });
socket.on("ready", async (data) => {
  out({ event: "ready", data });
  if (socket.io.engine.transport.name !== "websocket") {
    await new Promise((resolve) => socket.io.engine.once("upgrade", resolve));
  }
  out({ event: "transport", name: socket.io.engine.transport.name });
  if (opts.send) {
    const [channel_id, content, nonce] = opts.send;
    const ack = await socket.timeout(5000).emitWithAck("message:send", { channel_id, content, nonce });
    out({ event: "ack", data: ack });
    acked = true;
  }
  if (acked && received >= opts.expect) finish(0);
});
socket.on("message:created", (data) => {
  out({ event: "message:created", data });
  received += 1;
  if (acked && received >= opts.expect) finish(0);
});
