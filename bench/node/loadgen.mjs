// Socket.IO load generator for the benchmarks (one Node process, socket.io-client 4).
//
// usage: node loadgen.mjs CONFIG.json
// The config names the scenario, the stack kind and the URLs; the result is written
// as JSON to config.resultPath. Progress lines go to stderr.
//
// Stack kinds:
//   "chat" — this project's gateway: auth {token}, `ready`, `message:send` with ack,
//            `message:created {channel_id, seq, message}`, `sync`.
//   "peer" — the minimal peers in bench/peers: `join` (room), `send` ({room,...}) → `msg`.
//
// Latency is send→deliver on one clock: sender and receivers live in this process
// and use performance.now(). CPU of the server processes is read from /proc/<pid>/stat
// at the start and end of each measured phase; this process's own CPU from
// process.cpuUsage(), so the report can show whether the load generator was the limit.
import { readFileSync, writeFileSync } from "node:fs";
import { performance } from "node:perf_hooks";
import { io } from "socket.io-client";

const cfg = JSON.parse(readFileSync(process.argv[2], "utf8"));
const now = () => performance.now();
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const tag = `[${cfg.scenario}/${cfg.stack}]`;
const log = (msg) => process.stderr.write(`${tag} ${msg}\n`);
const CHAT = cfg.kind === "chat";
const clkTck = cfg.clkTck || 100;
const hardDeadline = Date.now() + (cfg.maxSeconds || 600) * 1000;
setTimeout(() => { log("time limit reached; giving up"); process.exit(3); }, (cfg.maxSeconds || 600) * 1000).unref();

// ---------------------------------------------------------------- process stats
function procCpu(pid) {
  try {
    const s = readFileSync(`/proc/${pid}/stat`, "utf8");
    const f = s.slice(s.lastIndexOf(")") + 2).split(" ");
    return (Number(f[11]) + Number(f[12])) / clkTck; // utime + stime (fields 14, 15)
  } catch { return 0; }
}
export function procRss(pid) {
  try {
    const m = readFileSync(`/proc/${pid}/status`, "utf8").match(/VmRSS:\s+(\d+) kB/);
    return m ? Number(m[1]) * 1024 : 0;
  } catch { return 0; }
}
function machineBusy() {
  try {
    const f = readFileSync("/proc/stat", "utf8").split("\n")[0].trim().split(/\s+/).slice(1).map(Number);
    return (f[0] + f[1] + f[2] + f[5] + f[6] + f[7]) / clkTck; // user nice system irq softirq steal
  } catch { return 0; }
}
function snapshot() {
  const cpu = {};
  for (const [group, pids] of Object.entries(cfg.pids || {})) cpu[group] = pids.reduce((a, p) => a + procCpu(p), 0);
  const u = process.cpuUsage();
  return { t: now(), cpu, self: (u.user + u.system) / 1e6, busy: machineBusy() };
}
function phaseCost(a, b) {
  const wall = (b.t - a.t) / 1000;
  const cpu = {};
  for (const g of Object.keys(a.cpu)) cpu[g] = b.cpu[g] - a.cpu[g];
  const ours = Object.values(cpu).reduce((x, y) => x + y, 0) + (b.self - a.self);
  const busy = b.busy - a.busy;
  return { wall_s: wall, cpu_s: cpu, loadgen_cpu_s: b.self - a.self, loadgen_cpu_pct: (100 * (b.self - a.self)) / wall,
    machine_busy_cores: busy / wall, other_cores: Math.max(0, busy - ours) / wall };
}

// ---------------------------------------------------------------- clients
class Client {
  constructor(url, token, room) {
    this.url = url; this.token = token; this.room = room;
    this.socket = null; this.onMsg = null; this.readyCount = 0; this.onReady = null;
  }
  open({ reconnection = false } = {}) {
    return new Promise((resolve, reject) => {
      const s = io(this.url, {
        forceNew: true, transports: ["websocket"], reconnection, timeout: 20000,
        reconnectionDelay: 1000, reconnectionDelayMax: 5000, randomizationFactor: 0.5,
        auth: this.token ? { token: this.token } : undefined,
      });
      this.socket = s;
      let settled = false;
      const done = (err) => { if (settled) return; settled = true; err ? reject(err) : resolve(this); };
      s.on(CHAT ? "message:created" : "msg", (d) => this.onMsg && this.onMsg(this, d));
      const ready = () => { this.readyCount += 1; if (this.onReady) this.onReady(this); done(); };
      if (CHAT) s.on("ready", ready); else s.on("connect", ready);
      s.on("connect_error", (err) => {
        if (!s.io.reconnection()) { s.close(); done(err); return; }
        // refused by the server (not a transport failure): socket.io-client does not retry
        // by itself; a real client tries again after a pause
        if (!s.active) setTimeout(() => s.connect(), 500 + Math.random() * 1500);
      });
    });
  }
  join() { return CHAT ? Promise.resolve() : this.socket.timeout(15000).emitWithAck("join", this.room); }
  // Resolves to the per-room seq (chat: assigned by the server; peer: by the caller).
  send(room, i, seq) {
    const t = now();
    if (CHAT) {
      return this.socket.timeout(15000).emitWithAck("message:send",
        { channel_id: room, content: `${i}|${t.toFixed(3)}`, nonce: `${cfg.runId}-${i}` })
        .then((ack) => { if (!ack || !ack.ok) throw new Error(ack && ack.error ? ack.error.code : "refused"); return ack.message.seq; });
    }
    return this.socket.timeout(15000).emitWithAck("send", peerPayload(room, i, t, seq)).then(() => seq);
  }
  close() { if (this.socket) this.socket.close(); }
}
// What the peers are sent and relay: a chat message event of the shape and size of this
// project's `message:created` (PROTOCOL.md's message object, with an author and nonce as
// long as this harness gives its users), with the peers' routing fields (room, i) where
// the event has its channel_id: within a few bytes of this project's frames (about 340).
function peerPayload(room, i, t, seq) {
  return { room, i, seq, message: {
    id: String(1000000 + i), channel_id: room, seq, author: { id: "bench-fanout-0", name: "bench-fanout-0" },
    content: `${i}|${t.toFixed(3)}`, nonce: `${cfg.runId}-${i}`, attachments: [], embeds: [], mentions: [],
    reply_to: null, created_at: new Date().toISOString(), edited_at: null } };
}
// -> {room, i, seq}
function parse(d) {
  if (CHAT) {
    const [i] = d.message.content.split("|");
    return { room: d.channel_id, i: Number(i), seq: d.seq };
  }
  return { room: d.room, i: d.i, seq: d.seq };
}

async function pool(items, concurrency, fn, label) {
  let next = 0, done = 0, failed = 0;
  const step = Math.max(1, Math.floor(items.length / 10));
  const worker = async () => {
    while (next < items.length && Date.now() < hardDeadline) {
      const k = next++;
      try { await fn(items[k], k); } catch (e) { failed += 1; if (failed <= 3) log(`${label}: ${e.message}`); }
      done += 1;
      if (label && done % step === 0) log(`${label} ${done}/${items.length}`);
    }
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, items.length) }, worker));
  return failed;
}

// ---------------------------------------------------------------- message tracking
class Tracker {
  constructor() { this.msgs = new Map(); this.reset(); }
  reset() { this.latencies = []; this.first = []; this.deliveries = 0; this.timeline = []; this.t0 = now(); this.sendErrors = 0; this.sent = 0; this.onComplete = null; }
  sent_(i, expected) { this.msgs.set(i, { t: now(), expected, got: 0, done: false }); this.sent += 1; }
  deliver(i) {
    const m = this.msgs.get(i);
    if (!m) return;
    const t = now();
    m.got += 1; this.deliveries += 1;
    if (m.got === 1) this.first.push(t - m.t);
    this.latencies.push(t - m.t);
    const b = Math.floor((t - this.t0) / 1000);
    this.timeline[b] = (this.timeline[b] || 0) + 1;
    if (m.got >= m.expected && !m.done) { m.done = true; if (this.onComplete) this.onComplete(i); }
  }
  missing(ids) { let n = 0; for (const i of ids) { const m = this.msgs.get(i); if (m) n += Math.max(0, m.expected - m.got); } return n; }
  async drain(ids, timeoutMs) {
    const end = now() + timeoutMs;
    while (now() < end && this.missing(ids) > 0) await sleep(50);
  }
}
function pct(sorted, p) { return sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] : null; }
function summary(lat) {
  const s = Float64Array.from(lat).sort();
  const sample = [];
  const stepN = Math.max(1, Math.floor(s.length / 20000));
  for (let k = 0; k < s.length; k += stepN) sample.push(Number(s[k].toFixed(3)));
  return { count: s.length, p50_ms: pct(s, 50), p90_ms: pct(s, 90), p99_ms: pct(s, 99), max_ms: s.length ? s[s.length - 1] : null, sample };
}

// Open loop: `rate` messages/s for `durS` seconds; sendFn(i) starts one send.
async function openLoop(tracker, rate, durS, sendFn) {
  const n = Math.max(1, Math.round(rate * durS));
  const interval = 1000 / rate;
  const start = now();
  const ids = [];
  let sent = 0;
  while (sent < n && Date.now() < hardDeadline) {
    const due = Math.min(n, Math.floor((now() - start) / interval) + 1);
    while (sent < due) { ids.push(sendFn()); sent += 1; }
    await sleep(1);
  }
  return { ids, sendWall_s: (now() - start) / 1000 };
}

// ---------------------------------------------------------------- scenarios
const urls = cfg.urls;

let retries = 0;
// Setup connects retry like a client would (the gateway may answer `unavailable` under a connect burst).
async function openRetry(c, attempts = 10) {
  for (let k = 1; ; k++) {
    try { await c.open(); return; } catch (e) {
      if (k >= attempts) throw e;
      retries += 1;
      await sleep(500 + Math.random() * 1500);
    }
  }
}
// After a connect burst, wait until the server nodes are quiet (< 10 % of a core over
// 1 s) before measuring: on a chat stack, members coming online produce presence
// events to every other member of their guild, which would be measured as backlog.
async function settle(maxS = 90) {
  const t0 = now();
  let prev = snapshot();
  while ((now() - t0) / 1000 < maxS) {
    await sleep(1000);
    const cur = snapshot();
    const busy = (cur.cpu.nodes - prev.cpu.nodes) / ((cur.t - prev.t) / 1000);
    prev = cur;
    if (busy < 0.1) break;
  }
  const s = (now() - t0) / 1000;
  log(`servers quiet after ${s.toFixed(1)} s`);
  return s;
}
async function connectMembers(tokens, rooms, label) {
  const clients = tokens.map((tok, k) => new Client(urls[k % urls.length], tok, rooms[k]));
  const t0 = now();
  const failed = await pool(clients, cfg.connectConcurrency || 100, async (c) => { await openRetry(c); await c.join(); }, label);
  if (failed) throw new Error(`${failed} clients failed to connect`);
  const connect_s = (now() - t0) / 1000;
  return { clients, connect_s, settle_s: await settle() };
}

async function fanout() {
  const N = cfg.members;
  const room = cfg.room || "fanout";
  const tokens = cfg.tokens || Array.from({ length: N }, () => null);
  const { clients, connect_s, settle_s } = await connectMembers(tokens, tokens.map(() => room), "connected");
  const tr = new Tracker();
  for (const c of clients) c.onMsg = (_c, d) => tr.deliver(parse(d).i);
  const sender = clients[0];
  let counter = 0;
  const sendOne = () => {
    const i = counter++;
    tr.sent_(i, N);
    sender.send(room, i, i + 1).catch(() => { tr.sendErrors += 1; });
    return i;
  };
  // warm-up
  log("warm-up");
  const warm = await openLoop(tr, 2, 2, sendOne);
  await tr.drain(warm.ids, 10000);
  const result = { members: N, connect_s, settle_s, phases: [] };

  // saturation: closed loop, at most `window` messages not yet delivered to every member
  log(`saturation: closed loop, window ${cfg.window} messages, ${cfg.saturateSeconds} s`);
  tr.reset();
  let outstanding = 0, wake = null, stalled = false;
  tr.onComplete = () => { outstanding -= 1; if (wake) { const w = wake; wake = null; w(); } };
  const a = snapshot();
  const end = now() + cfg.saturateSeconds * 1000;
  const ids = [];
  while (now() < end && !stalled) {
    while (outstanding < cfg.window) { ids.push(sendOne()); outstanding += 1; }
    const ok = await Promise.race([new Promise((r) => { wake = () => r(true); }), sleep(10000).then(() => false)]);
    if (!ok) { stalled = true; log("saturation: no progress for 10 s"); }
  }
  await tr.drain(ids, 10000);
  const b = snapshot();
  tr.onComplete = null;
  const cost = phaseCost(a, b);
  const sat = {
    name: "saturation", messages: ids.length, deliveries: tr.deliveries, missing: tr.missing(ids), send_errors: tr.sendErrors,
    deliveries_per_s: tr.deliveries / cost.wall_s, ...cost, latency: summary(tr.latencies), timeline: tr.timeline, stalled,
  };
  result.phases.push(sat);
  log(`saturation: ${Math.round(sat.deliveries_per_s)} deliveries/s, p99 ${sat.latency.p99_ms?.toFixed(1)} ms, loadgen CPU ${cost.loadgen_cpu_pct.toFixed(0)} %`);

  // fixed rates (deliveries/s), below saturation where the stack allows
  const rates = [...cfg.rates];
  if (cfg.halfSaturation) rates.push(Math.round(sat.deliveries_per_s / 2));
  for (const dps of rates) {
    const mps = Math.max(1, dps / N);
    log(`fixed rate: ${dps} deliveries/s (${mps.toFixed(1)} msg/s) for ${cfg.rateSeconds} s`);
    await sleep(1000);
    tr.reset();
    const a2 = snapshot();
    const ol = await openLoop(tr, mps, cfg.rateSeconds, sendOne);
    await tr.drain(ol.ids, 10000);
    const b2 = snapshot();
    const c2 = phaseCost(a2, b2);
    const ph = {
      name: `rate-${dps}`, target_deliveries_per_s: dps, messages: ol.ids.length, deliveries: tr.deliveries,
      missing: tr.missing(ol.ids), send_errors: tr.sendErrors, achieved_deliveries_per_s: tr.deliveries / ol.sendWall_s,
      ...c2, latency: summary(tr.latencies), first_delivery: summary(tr.first), timeline: tr.timeline, half_saturation: cfg.halfSaturation && dps === rates[rates.length - 1],
    };
    result.phases.push(ph);
    log(`fixed rate ${dps}/s: p50 ${ph.latency.p50_ms?.toFixed(1)} ms, p99 ${ph.latency.p99_ms?.toFixed(1)} ms, missing ${ph.missing}`);
  }
  for (const c of clients) c.close();
  return result;
}

async function chat() {
  // cfg.channels: [{room, tokens: [...]}]
  const tokens = [], rooms = [];
  for (const ch of cfg.channels) for (const tok of ch.tokens) { tokens.push(tok); rooms.push(ch.room); }
  const { clients, connect_s, settle_s } = await connectMembers(tokens, rooms, "connected");
  const byRoom = new Map(cfg.channels.map((ch) => [ch.room, []]));
  clients.forEach((c) => byRoom.get(c.room).push(c));
  const roomList = cfg.channels.map((ch) => ch.room);
  const M = cfg.channels[0].tokens.length;
  const tr = new Tracker();
  for (const c of clients) c.onMsg = (_c, d) => tr.deliver(parse(d).i);
  let counter = 0;
  const seqs = new Map(roomList.map((r) => [r, 0]));
  const sendOne = () => {
    const i = counter++;
    const room = roomList[i % roomList.length];
    const members = byRoom.get(room);
    const sender = members[Math.floor(i / roomList.length) % members.length];
    const seq = seqs.get(room) + 1; seqs.set(room, seq);
    tr.sent_(i, members.length);
    sender.send(room, i, seq).catch(() => { tr.sendErrors += 1; });
    return i;
  };
  log("warm-up");
  const warm = await openLoop(tr, 20, 2, sendOne);
  await tr.drain(warm.ids, 10000);
  const result = { channels: roomList.length, members_per_channel: M, connect_s, settle_s, steps: [], best_rate: null };
  for (const rate of cfg.rates) {
    await sleep(1000);
    log(`step: ${rate} msg/s for ${cfg.stepSeconds} s`);
    tr.reset();
    const a = snapshot();
    const ol = await openLoop(tr, rate, cfg.stepSeconds, sendOne);
    await tr.drain(ol.ids, 5000);
    const b = snapshot();
    const lat = summary(tr.latencies);
    const missing = tr.missing(ol.ids);
    const pass = lat.p99_ms !== null && lat.p99_ms <= cfg.p99LimitMs && missing === 0 && tr.sendErrors === 0;
    const step = { rate, messages: ol.ids.length, deliveries: tr.deliveries, missing, send_errors: tr.sendErrors, send_wall_s: ol.sendWall_s,
      achieved_msgs_per_s: ol.ids.length / ol.sendWall_s, ...phaseCost(a, b), latency: lat, timeline: tr.timeline, pass };
    result.steps.push(step);
    log(`step ${rate} msg/s: p50 ${lat.p50_ms?.toFixed(1)} ms, p99 ${lat.p99_ms?.toFixed(1)} ms, missing ${missing}, send errors ${tr.sendErrors} → ${pass ? "pass" : "FAIL"}`);
    if (pass) result.best_rate = rate; else break;
  }
  for (const c of clients) c.close();
  return result;
}

async function connections() {
  const N = cfg.count;
  const tokens = cfg.tokens || Array.from({ length: N }, () => null);
  const pid = cfg.targetPid;
  const clients = tokens.map((tok) => new Client(urls[0], tok, "idle"));
  const warmN = Math.min(cfg.warm || 100, N);
  log(`warm-up: ${warmN} connections`);
  await pool(clients.slice(0, warmN), 20, (c) => openRetry(c));
  await sleep(2000);
  const rssBase = procRss(pid);
  const a = snapshot();
  const t0 = now();
  const rest = clients.slice(warmN);
  const failed = await pool(rest, cfg.connectConcurrency || 50, (c) => openRetry(c, 5), "connected");
  const connectWall = (now() - t0) / 1000;
  const b = snapshot();
  log(`connected ${rest.length - failed} in ${connectWall.toFixed(1)} s; idling ${cfg.idleSeconds} s`);
  await sleep(cfg.idleSeconds * 1000);
  const rssAfter = procRss(pid);
  const open = clients.filter((c) => c.socket && c.socket.connected).length;
  const res = {
    count: N, warm: warmN, failed, open_after_idle: open, connect_wall_s: connectWall, connects_per_s: (rest.length - failed) / connectWall,
    rss_base_bytes: rssBase, rss_after_bytes: rssAfter, rss_per_conn_bytes: (rssAfter - rssBase) / (rest.length - failed),
    connect_phase: phaseCost(a, b),
  };
  for (const c of clients) c.close();
  return res;
}

async function storm() {
  // cfg.channels: [{room, tokens: [...]}]; tokens[0] of each channel is its sender (not dropped)
  const senders = [], members = [];
  for (const ch of cfg.channels) {
    senders.push(new Client(urls[0], ch.tokens[0], ch.room));
    ch.tokens.slice(1).forEach((tok, k) => members.push(new Client(urls[k % urls.length], tok, ch.room)));
  }
  const acked = new Map(cfg.channels.map((ch) => [ch.room, new Set()])); // room -> acked seqs
  const lastSeq = new Map(cfg.channels.map((ch) => [ch.room, 0]));
  for (const c of members) {
    c.seen = new Set(); c.contig = 0; c.syncing = null; c.syncs = 0; c.backAt = null; c.reconnectedAt = null; c.dropped = false;
    c.onMsg = (cl, d) => { const m = parse(d); record(cl, m.seq); if (CHAT && m.seq > cl.contig + 1 && !cl.syncing && cl.backAt !== null) startSync(cl); };
  }
  function record(c, seq) { c.seen.add(seq); while (c.seen.has(c.contig + 1)) c.contig += 1; }
  async function syncOnce(c) {
    for (let page = 0; page < 200; page++) {
      c.syncs += 1;
      let ack;
      try { ack = await c.socket.timeout(10000).emitWithAck("sync", { channels: { [c.room]: c.contig } }); } catch { await sleep(300); continue; }
      if (!ack || !ack.ok) { await sleep(300); continue; }
      const p = ack.channels[c.room];
      for (const ev of p.events) record(c, Number(ev.seq));
      if (p.complete) return true;
    }
    return false;
  }
  function startSync(c) { c.syncing = syncOnce(c).finally(() => { c.syncing = null; }); return c.syncing; }
  const all = [...senders, ...members];
  log(`connecting ${members.length} clients + ${senders.length} senders`);
  const failed = await pool(all, cfg.connectConcurrency || 100, async (c) => { await openRetry(c); await c.join(); }, "connected");
  if (failed) throw new Error(`${failed} clients failed to connect`);
  const settleS = await settle();
  for (const c of members) c.backAt = 0;

  // steady traffic through the storm
  let sending = true, sendErrors = 0, counter = 0;
  const sendLoop = (async () => {
    const interval = 1000 / cfg.rate;
    const start = now();
    let sent = 0;
    while (sending && Date.now() < hardDeadline) {
      const due = Math.floor((now() - start) / interval) + 1;
      while (sent < due) {
        const k = counter++;
        const s = senders[k % senders.length];
        const seq = lastSeq.get(s.room) + 1; lastSeq.set(s.room, seq);
        s.send(s.room, k, seq).then((sq) => acked.get(s.room).add(Number(sq))).catch(() => { sendErrors += 1; });
        sent += 1;
      }
      await sleep(2);
    }
  })();
  await sleep(2000);

  // the drop: every member's transport is closed at once; clients reconnect with
  // socket.io-client's own backoff (0.5–1.5 s first delay) and, on `ready`, `sync`.
  log(`dropping ${members.length} clients`);
  const a = snapshot();
  const tDrop = now();
  for (const c of members) {
    c.backAt = null;
    c.socket.io.reconnection(true);
    c.onReady = (cl) => {
      cl.reconnectedAt = now();
      const fin = () => { cl.backAt = now(); };
      if (CHAT) startSync(cl).then(fin); else cl.join().then(fin, () => {});
    };
    c.socket.io.engine.close();
  }
  const limit = tDrop + cfg.stormTimeoutSeconds * 1000;
  let lastLog = now();
  while (now() < limit) {
    const back = members.filter((c) => c.backAt !== null).length;
    if (back === members.length) break;
    if (now() - lastLog > 1000) { log(`back and caught up: ${back}/${members.length}`); lastLog = now(); }
    await sleep(20);
  }
  const tAll = now();
  const b = snapshot();
  const backCount = members.filter((c) => c.backAt !== null).length;
  await sleep(2000);
  sending = false;
  await sendLoop;
  await sleep(2000);
  // the client's own rule: a hole means `sync`
  const missingOf = (list) => list.reduce((n, c) => { let m = 0; for (const s of acked.get(c.room)) if (!c.seen.has(s)) m += 1; return n + m; }, 0);
  const missingBefore = missingOf(members);
  if (CHAT && missingBefore) { log(`${missingBefore} holes; members sync`); await pool(members.filter((c) => c.socket.connected), 200, (c) => startSync(c)); }
  // Loss is what a member that is back (reconnected and synced) still misses; a member not
  // back by now has not caught up yet, which is reported apart (its messages are stored).
  const backNow = members.filter((c) => c.backAt !== null);
  const notBack = members.filter((c) => c.backAt === null);
  const missingAfter = missingOf(backNow);
  const reconnectTimes = members.filter((c) => c.reconnectedAt).map((c) => c.reconnectedAt - tDrop);
  const backTimes = members.filter((c) => c.backAt).map((c) => c.backAt - tDrop);
  const res = {
    clients: members.length, channels: cfg.channels.length, rate_msgs_per_s: cfg.rate, back: backCount,
    all_back_s: backCount === members.length ? (tAll - tDrop) / 1000 : null,
    reconnect_ms: summary(reconnectTimes), back_ms: summary(backTimes),
    acked: [...acked.values()].reduce((n, s) => n + s.size, 0), send_errors: sendErrors,
    missing_before_settle: missingBefore, lost: missingAfter, syncs: members.reduce((n, c) => n + c.syncs, 0),
    not_back_at_end: notBack.length, not_back_missing: missingOf(notBack),
    storm_phase: phaseCost(a, b), settle_s: settleS,
  };
  for (const c of all) c.close();
  return res;
}

const scenarios = { fanout, chat, connections, storm };
const started = now();
try {
  const result = await scenarios[cfg.scenario]();
  result.loadgen_total_s = (now() - started) / 1000;
  result.connect_retries = retries;
  writeFileSync(cfg.resultPath, JSON.stringify({ ok: true, result }));
  log("done");
  process.exit(0);
} catch (e) {
  writeFileSync(cfg.resultPath, JSON.stringify({ ok: false, error: String(e && e.stack || e) }));
  log(`failed: ${e && e.message}`);
  process.exit(1);
}
