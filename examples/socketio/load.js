'use strict';
// Load / check client for the socket.io example (used by sticky's tests).
//
//   node load.js --url http://HOST:PORT [--urls u1,u2,...] --clients N --rounds R
//                [--transport polling|default|websocket]
//                [--local-address-base 198.18.1.1 [--expect-xff] | --header-xff [--xff-base A]]
//                [--broadcast] [--timeout-ms 60000] [--batch 50]
//                [--reconnect [--interval-ms 200]] [--pause-ms 0]
//                [--parallel N] [--ready-file PATH]
//
// Opens N socket.io-client connections (forceNew, no reconnection unless
// --reconnect), connecting them in batches, then every client does R rounds
// of `whoami` + `echo` acks (5 s timeout each). Prints ONE JSON line on
// stdout and exits 0, or, if the overall timeout hits first, prints what it
// has (with "timed_out": true) and exits 1 (0 with --reconnect). Judging the
// numbers is up to the caller.
//
// --local-address-base A  client i binds the i-th IPv4 address counting up
//                         from A (skipping .0 and .255) as its TCP source
//                         address, for the polling requests and the websocket
//                         alike (an http.Agent with localAddress).
// --expect-xff            with --local-address-base: a proxy in front (nginx,
//                         HAProxy) adds X-Forwarded-For, so the workers must see
//                         the bound address there (not as the TCP peer).
// --pause-ms P            pause P ms between the rounds of a client (not with
//                         --reconnect), so its session lasts a while.
// --parallel N            clients doing their rounds at once (default: --batch);
//                         --parallel N=clients keeps every session busy together.
// --ready-file PATH       once every client connected (or failed to), write the
//                         number connected to PATH, so a caller can change the
//                         balancer while all sessions are open.
// --header-xff            do not bind; send X-Forwarded-For: <that address>
//                         instead (for a proxy in front of the workers). The
//                         addresses count from --xff-base, else from
//                         --local-address-base, else from 198.18.1.1.
// --urls u1,u2            client i connects to u[i % len] (e.g. straight to
//                         two workers to test the Redis adapter).
// --broadcast             after all clients connected, client 0 emits
//                         `broadcast`; every client must get `news` in 5 s.
// --reconnect             for a rolling restart of the workers: clients
//                         reconnect (delay 100..1000 ms, randomization 0.5,
//                         no attempt limit) and each does R `whoami` rounds
//                         spaced --interval-ms (default 200) apart; a round
//                         that times out or is cut by a disconnect is retried
//                         once the client is connected again. Reaching
//                         --timeout-ms is no error in this mode: clients that
//                         did not finish count as `failed_clients`, the JSON
//                         has "timed_out": true, and the exit code is still 0.

const http = require('node:http');
const https = require('node:https');
const crypto = require('node:crypto');
const { io } = require('socket.io-client');

const ACK_TIMEOUT_MS = 5000;
const UPGRADE_WAIT_MS = 5000;
const NEWS_WAIT_MS = 5000;

function usage(msg) {
  if (msg) process.stderr.write(`load.js: ${msg}\n`);
  process.stderr.write(
    'usage: node load.js --url URL [--urls U1,U2] --clients N --rounds R ' +
      '[--transport polling|default|websocket] [--local-address-base IPV4] ' +
      '[--expect-xff] [--pause-ms MS] [--header-xff [--xff-base IPV4]] [--broadcast] [--timeout-ms MS] [--batch N] ' +
      '[--connect-timeout-ms MS] [--reconnect [--interval-ms MS]] [--parallel N] [--ready-file PATH]\n'
  );
  process.exit(2);
}

function parseArgs(argv) {
  const o = {
    urls: [],
    clients: 10,
    rounds: 1,
    transport: 'default',
    localAddressBase: null,
    headerXff: false,
    expectXff: false,
    pauseMs: 0,
    xffBase: null,
    broadcast: false,
    timeoutMs: 60000,
    batch: 50,
    connectTimeoutMs: 20000,
    reconnect: false,
    intervalMs: 200,
    parallel: 0,
    readyFile: null,
  };
  const num = (name, v) => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < 0) usage(`${name} needs a non-negative integer, got ${v}`);
    return n;
  };
  for (let i = 0; i < argv.length; i++) {
    let a = argv[i];
    let v;
    const eq = a.indexOf('=');
    if (a.startsWith('--') && eq > 0) {
      v = a.slice(eq + 1);
      a = a.slice(0, eq);
    }
    const val = () => {
      if (v !== undefined) return v;
      if (i + 1 >= argv.length) usage(`${a} needs a value`);
      return argv[++i];
    };
    switch (a) {
      case '--url': o.urls.unshift(val()); break;
      case '--urls': o.urls.push(...val().split(',').map((s) => s.trim()).filter(Boolean)); break;
      case '--clients': o.clients = num(a, val()); break;
      case '--rounds': o.rounds = num(a, val()); break;
      case '--transport': o.transport = val(); break;
      case '--default': o.transport = 'default'; break;
      case '--polling': o.transport = 'polling'; break;
      case '--local-address-base': o.localAddressBase = val(); break;
      case '--header-xff': o.headerXff = true; break;
      case '--expect-xff': o.expectXff = true; break;
      case '--pause-ms': o.pauseMs = num(a, val()); break;
      case '--xff-base': o.xffBase = val(); break;
      case '--broadcast': o.broadcast = true; break;
      case '--timeout-ms': o.timeoutMs = num(a, val()); break;
      case '--batch': o.batch = Math.max(1, num(a, val())); break;
      case '--connect-timeout-ms': o.connectTimeoutMs = num(a, val()); break;
      case '--reconnect': o.reconnect = true; break;
      case '--interval-ms': o.intervalMs = num(a, val()); break;
      case '--parallel': o.parallel = Math.max(1, num(a, val())); break;
      case '--ready-file': o.readyFile = val(); break;
      case '-h': case '--help': usage(); break;
      default: usage(`unknown argument ${a}`);
    }
  }
  if (o.urls.length === 0) usage('--url is required');
  // --url and --urls together: keep --url first, drop duplicates
  o.urls = [...new Set(o.urls)];
  if (!['polling', 'default', 'websocket'].includes(o.transport)) usage(`bad --transport ${o.transport}`);
  return o;
}

// ---- IPv4 address arithmetic ------------------------------------------------

function ipv4ToInt(s) {
  const p = s.split('.');
  if (p.length !== 4) usage(`not an IPv4 address: ${s}`);
  let n = 0;
  for (const x of p) {
    const b = Number(x);
    if (!Number.isInteger(b) || b < 0 || b > 255 || x === '') usage(`not an IPv4 address: ${s}`);
    n = n * 256 + b;
  }
  return n;
}

function intToIpv4(n) {
  return [n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255].join('.');
}

// `count` addresses counting up from `base`, skipping x.x.x.0 and x.x.x.255.
function addressList(base, count) {
  const out = [];
  let n = ipv4ToInt(base);
  while (out.length < count) {
    if (n > 0xffffffff) usage(`address range from ${base} overflows`);
    const last = n & 255;
    if (last !== 0 && last !== 255) out.push(intToIpv4(n));
    n++;
  }
  return out;
}

// "::ffff:127.0.0.2" -> "127.0.0.2"
function normAddr(a) {
  if (typeof a !== 'string') return String(a);
  return a.startsWith('::ffff:') && a.includes('.') ? a.slice(7) : a;
}

// ---- error classification ----------------------------------------------------

// Text of an engine.io / socket.io-client error, including the body of a
// failed polling response (TransportError.context is the XHR object, whose
// responseText holds e.g. {"code":1,"message":"Session ID unknown"}).
function errorText(err, depth = 0) {
  if (err == null || depth > 3) return '';
  if (typeof err !== 'object') return String(err);
  const parts = [];
  if (err.message) parts.push(String(err.message));
  if (err.description !== undefined && err.description !== err) {
    parts.push(errorText(err.description, depth + 1));
  }
  if (err.context) {
    try {
      const ctx = err.context;
      if (typeof ctx.status === 'number') parts.push(`status ${ctx.status}`);
      if (typeof ctx.responseText === 'string' && ctx.responseText) parts.push(ctx.responseText);
    } catch (_) {
      // responseText may throw for some response types
    }
  }
  if (err.data && typeof err.data === 'object') {
    try { parts.push(JSON.stringify(err.data)); } catch (_) { /* ignore */ }
  }
  return parts.filter(Boolean).join(' | ');
}

const SID_UNKNOWN = /session id unknown/i;

// ---- the run -------------------------------------------------------------------

const opts = parseArgs(process.argv.slice(2));
const started = Date.now();

let addrs = null; // per-client expected address (bound or X-Forwarded-For)
if (opts.headerXff) {
  addrs = addressList(opts.xffBase || opts.localAddressBase || '198.18.1.1', opts.clients);
} else if (opts.localAddressBase) {
  addrs = addressList(opts.localAddressBase, opts.clients);
}

const clients = [];
const errorSamples = [];
function sample(text) {
  if (errorSamples.length < 10 && text && !errorSamples.includes(text)) errorSamples.push(text);
}

let broadcastNonce = null;
let broadcastSent = false;
let timedOut = false;

function makeClient(i) {
  const url = opts.urls[i % opts.urls.length];
  const c = {
    i,
    url,
    addr: addrs ? addrs[i] : null,
    socket: null,
    connected: false,
    everConnected: false,
    connectFailed: false,
    sidUnknown: 0,
    seenErrors: new WeakSet(),
    ackTimeouts: 0,
    echoMismatches: 0,
    acks: 0,
    workers: new Set(),
    addressesSeen: new Set(),
    xffSeen: new Set(),
    upgraded: false,
    upgradeErrors: 0,
    disconnects: 0,
    news: null,
    // socket.io socket id -> { workers: Set, pids: Set } of its whoami acks,
    // in connection order (a new id after every reconnect)
    sessions: new Map(),
    // --reconnect only
    reconnects: 0,
    failedHandshakes: 0, // connect_error events + sessions that died before CONNECT
    attemptFailed: false, // the current connection attempt is already counted as failed
    roundsDone: 0,
    acksCut: 0,
    connectWaiters: new Set(),
  };

  const ioOpts = {
    forceNew: true,
    reconnection: false,
    timeout: opts.connectTimeoutMs,
  };
  if (opts.reconnect) {
    Object.assign(ioOpts, {
      reconnection: true,
      reconnectionAttempts: Infinity, // until the overall timeout
      reconnectionDelay: 100,
      reconnectionDelayMax: 1000,
      randomizationFactor: 0.5,
    });
  }
  if (opts.transport === 'polling') ioOpts.transports = ['polling'];
  else if (opts.transport === 'websocket') ioOpts.transports = ['websocket'];
  // default: polling first, then upgrade to websocket

  if (c.addr && opts.headerXff) {
    ioOpts.extraHeaders = { 'x-forwarded-for': c.addr };
  } else if (c.addr) {
    // One agent per client. engine.io-client hands `agent` to both the
    // polling transport (xmlhttprequest-ssl -> http.request({ agent })) and
    // the websocket transport (ws -> http.request({ agent })); the agent
    // merges its own options, localAddress included, into every socket it
    // opens. `localAddress` itself is only picked up by the websocket
    // transport, so it is the agent that makes polling bind too.
    const Agent = url.startsWith('https:') || url.startsWith('wss:') ? https.Agent : http.Agent;
    ioOpts.agent = new Agent({ localAddress: c.addr, keepAlive: false });
    ioOpts.localAddress = c.addr;
  }

  const noteError = (err, where) => {
    if (err && typeof err === 'object') {
      if (c.seenErrors.has(err)) return;
      c.seenErrors.add(err);
    }
    const text = errorText(err);
    if (SID_UNKNOWN.test(text)) c.sidUnknown++;
    sample(`${where}: ${text}`);
  };

  const socket = io(url, ioOpts);
  c.socket = socket;

  // The manager makes a new engine for every (re)connection attempt.
  const hooked = new WeakSet();
  const hookEngine = (engine) => {
    if (!engine || hooked.has(engine)) return;
    hooked.add(engine);
    engine.on('error', (err) => noteError(err, 'engine error'));
    engine.on('close', (reason, description) => {
      if (description) noteError(description, `engine close (${reason})`);
    });
    engine.on('upgrade', () => { c.upgraded = true; });
    engine.on('upgradeError', (err) => {
      c.upgradeErrors++;
      sample(`upgradeError: ${errorText(err)}`);
    });
  };
  const engine = socket.io.engine;
  hookEngine(engine);
  socket.io.on('open', () => hookEngine(socket.io.engine));
  socket.io.on('reconnect_attempt', () => { c.attemptFailed = false; });
  socket.io.on('error', (err) => noteError(err, 'manager error'));

  socket.on('connect', () => {
    if (c.everConnected) c.reconnects++; // only ever fires again after a disconnect
    c.connected = true;
    c.everConnected = true;
    c.attemptFailed = false;
    const eng = socket.io.engine;
    hookEngine(eng);
    if (eng && eng.transport && eng.transport.name === 'websocket' && opts.transport === 'default') {
      c.upgraded = true;
    }
    for (const f of [...c.connectWaiters]) f();
  });
  socket.on('connect_error', (err) => {
    if (opts.reconnect && !closing) {
      c.failedHandshakes++;
      c.attemptFailed = true;
    }
    noteError(err, 'connect_error');
  });

  socket.on('news', (payload) => {
    if (broadcastNonce && payload && payload.msg === broadcastNonce && !c.news) {
      c.news = { at: Date.now(), from: payload.from };
      newsWaiters.forEach((f) => f());
    }
  });
  socket.on('disconnect', (reason, details) => {
    const wasConnected = c.connected;
    c.connected = false;
    // socket.io-client also emits 'disconnect' when the engine dies before the
    // socket.io CONNECT completed; only count drops of connected clients.
    if (!closing && c.everConnected && wasConnected) {
      c.disconnects++;
      sample(`disconnect: ${reason}`);
    }
    if (details) noteError(details, `disconnect (${reason})`);
    if (!opts.reconnect || closing) return;
    if (wasConnected) {
      c.attemptFailed = false; // a new attempt starts
    } else if (!c.attemptFailed) {
      // the session died between the engine.io handshake and the CONNECT
      c.failedHandshakes++;
      c.attemptFailed = true;
      sample(`handshake cut: ${reason}`);
    }
    // "io server disconnect" (and a client-side disconnect) stop the manager's
    // automatic reconnection; reconnect by hand then.
    if (!socket.active) {
      setTimeout(() => {
        if (!closing && !socket.connected) socket.connect();
      }, 100);
    }
  });

  c.ready = new Promise((resolve) => {
    socket.once('connect', () => resolve(true));
    if (!opts.reconnect) {
      socket.once('connect_error', () => {
        c.connectFailed = true;
        resolve(false);
      });
      // engine closed before the socket.io CONNECT completed
      socket.once('disconnect', () => {
        if (!c.everConnected) c.connectFailed = true;
        resolve(false);
      });
    }
    // --reconnect: keep trying (workReconnect waits for the connect), but do
    // not hold up the batch forever.
    // belt and braces: never let one client stall the batch
    setTimeout(() => {
      if (!c.everConnected) c.connectFailed = true;
      resolve(false);
    }, opts.connectTimeoutMs + 2000).unref();
  });
  return c;
}

let closing = false;
const newsWaiters = new Set();

function waitUpgrade(c) {
  if (opts.transport !== 'default' || c.upgraded) return Promise.resolve();
  return new Promise((resolve) => {
    const engine = c.socket.io.engine;
    const done = () => {
      clearTimeout(t);
      engine.off('upgrade', done);
      engine.off('upgradeError', done);
      resolve();
    };
    const t = setTimeout(done, UPGRADE_WAIT_MS);
    engine.on('upgrade', done);
    engine.on('upgradeError', done);
  });
}

async function emitAck(c, ...args) {
  try {
    return { ok: true, value: await c.socket.timeout(ACK_TIMEOUT_MS).emitWithAck(...args) };
  } catch (err) {
    return { ok: false, err };
  }
}

// Record a `whoami` ack that came back on socket.io session `sid`.
function noteWhoami(c, sid, v) {
  c.acks++;
  const w = String(v.worker);
  c.workers.add(w);
  let s = c.sessions.get(sid);
  if (!s) {
    s = { workers: new Set(), pids: new Set() };
    c.sessions.set(sid, s);
  }
  s.workers.add(w);
  s.pids.add(v.pid);
  for (const a of v.addresses || [v.address]) c.addressesSeen.add(normAddr(a));
  for (const x of v.xff || []) c.xffSeen.add(String(x));
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// Resolves true once `c` is connected, false at `deadline`.
function waitConnected(c, deadline) {
  if (c.connected) return Promise.resolve(true);
  return new Promise((resolve) => {
    const done = (v) => {
      clearTimeout(t);
      c.connectWaiters.delete(onConnect);
      resolve(v);
    };
    const onConnect = () => done(true);
    const t = setTimeout(() => done(false), Math.max(0, deadline - Date.now()));
    c.connectWaiters.add(onConnect);
  });
}

// --reconnect: R `whoami` rounds spaced --interval-ms apart; a round whose
// ack times out or is cut by a disconnect is retried once connected again.
async function workReconnect(c) {
  const deadline = started + opts.timeoutMs;
  if (!(await waitConnected(c, deadline))) return;
  await waitUpgrade(c);
  while (c.roundsDone < opts.rounds && !closing) {
    if (!(await waitConnected(c, deadline))) return;
    const sid = c.socket.id;
    const who = await emitAck(c, 'whoami');
    if (closing) return;
    if (who.ok && who.value) {
      noteWhoami(c, sid, who.value);
      c.roundsDone++;
      if (c.roundsDone < opts.rounds) await sleep(opts.intervalMs);
    } else {
      c.ackTimeouts++;
      const text = errorText(who.err);
      if (/disconnected/i.test(text) || !c.connected || c.socket.id !== sid) c.acksCut++;
      else sample(`whoami: ${text}`);
      // retried at the top of the loop, once connected
    }
  }
}

async function work(c) {
  if (!c.connected) return;
  await waitUpgrade(c);
  for (let r = 0; r < opts.rounds; r++) {
    if (!c.connected) break;
    const sid = c.socket.id;
    const who = await emitAck(c, 'whoami');
    if (who.ok && who.value) {
      noteWhoami(c, sid, who.value);
    } else {
      c.ackTimeouts++;
    }
    const payload = { client: c.i, round: r, nonce: crypto.randomBytes(8).toString('hex') };
    if (!c.connected) break;
    const echo = await emitAck(c, 'echo', payload);
    if (echo.ok) {
      c.acks++;
      const v = echo.value;
      if (!v || v.client !== payload.client || v.round !== payload.round || v.nonce !== payload.nonce) {
        c.echoMismatches++;
      }
    } else {
      c.ackTimeouts++;
    }
    if (opts.pauseMs && r + 1 < opts.rounds) await sleep(opts.pauseMs);
  }
}

// Run `fn` over `items` with at most `limit` in flight.
async function pool(items, limit, fn) {
  let next = 0;
  const runners = [];
  for (let k = 0; k < Math.min(limit, items.length); k++) {
    runners.push((async () => {
      while (next < items.length) {
        const item = items[next++];
        await fn(item);
      }
    })());
  }
  await Promise.all(runners);
}

async function doBroadcast() {
  const live = clients.filter((c) => c.connected);
  const sender = clients[0] && clients[0].connected ? clients[0] : live[0];
  if (!sender) return;
  broadcastNonce = `bcast-${process.pid}-${crypto.randomBytes(6).toString('hex')}`;
  const allGot = () => live.every((c) => c.news || !c.connected);
  const waited = new Promise((resolve) => {
    const check = () => {
      if (allGot()) finish();
    };
    const finish = () => {
      clearTimeout(t);
      newsWaiters.delete(check);
      resolve();
    };
    const t = setTimeout(finish, NEWS_WAIT_MS);
    newsWaiters.add(check);
  });
  sender.socket.emit('broadcast', broadcastNonce);
  broadcastSent = true;
  await waited;
}

function summary() {
  const workers = {};
  let connected = 0;
  let failed = 0;
  let sidUnknown = 0;
  let ackTimeouts = 0;
  let split = 0;
  let upgraded = 0;
  let upgradeErrors = 0;
  let echoMismatches = 0;
  let disconnects = 0;
  let addrOk = true;
  let addrMismatches = 0;
  let checked = 0;
  let bReceived = 0;
  let reconnects = 0;
  let failedHandshakeEvents = 0;
  let failedClients = 0;
  let moved = 0;
  let acksCut = 0;
  let roundsDone = 0;
  const bWorkers = new Set();
  const bFrom = new Set();
  for (const c of clients) {
    if (c.everConnected) connected++;
    if (c.connectFailed || !c.everConnected) failed++;
    sidUnknown += c.sidUnknown;
    ackTimeouts += c.ackTimeouts;
    echoMismatches += c.echoMismatches;
    disconnects += c.disconnects;
    upgradeErrors += c.upgradeErrors;
    if (c.upgraded) upgraded++;
    // split: one socket.io session (socket id) answered by more than one
    // worker. Across a reconnect the worker may change legitimately (moved).
    const sess = [...c.sessions.values()];
    if (sess.some((s) => s.workers.size > 1)) split++;
    const firstWorkers = sess.map((s) => [...s.workers][0]);
    if (firstWorkers.some((w, k) => k > 0 && w !== firstWorkers[k - 1])) moved++;
    reconnects += c.reconnects;
    failedHandshakeEvents += c.failedHandshakes;
    acksCut += c.acksCut;
    roundsDone += c.roundsDone;
    if (c.roundsDone < opts.rounds) failedClients++;
    // a client that was split counts under each worker it was answered by
    for (const w of c.workers) workers[w] = (workers[w] || 0) + 1;
    if (c.news) {
      bReceived++;
      for (const w of c.workers) bWorkers.add(w);
      bFrom.add(String(c.news.from));
    }
    if (c.addressesSeen.size > 0 || c.xffSeen.size > 0) {
      checked++;
      let ok;
      const viaXff = opts.headerXff || opts.expectXff;
      if (viaXff && c.addr) {
        ok = c.xffSeen.size === 1 && c.xffSeen.has(c.addr);
      } else if (c.addr) {
        ok = c.addressesSeen.size === 1 && c.addressesSeen.has(c.addr);
      } else {
        ok = c.addressesSeen.size === 1; // unbound: at least one stable source address
      }
      if (!ok) {
        addrOk = false;
        addrMismatches++;
        sample(`client ${c.i}: expected ${c.addr || '(any one)'}, server saw ` +
          `${JSON.stringify([...(viaXff ? c.xffSeen : c.addressesSeen)])}`);
      }
    }
  }
  if (checked === 0) addrOk = false;
  const sortedWorkers = {};
  for (const k of Object.keys(workers).sort((a, b) => Number(a) - Number(b))) sortedWorkers[k] = workers[k];
  const sortNum = (s) => [...s].map((x) => (isNaN(Number(x)) ? x : Number(x))).sort((a, b) => a - b);
  const reconnectFields = opts.reconnect
    ? {
      reconnects,
      failed_clients: failedClients,
      moved_clients: moved,
    }
    : {};
  const reconnectExtra = opts.reconnect
    ? {
      reconnect: true,
      rounds: opts.rounds,
      interval_ms: opts.intervalMs,
      rounds_done: roundsDone,
      acks_cut_by_disconnect: acksCut,
    }
    : {};
  return {
    clients: opts.clients,
    connected,
    // --reconnect: connect_error events (+ sessions that died before CONNECT);
    // otherwise: clients that never connected
    failed_handshakes: opts.reconnect ? failedHandshakeEvents : failed,
    session_id_unknown: sidUnknown,
    ack_timeouts: ackTimeouts,
    ...reconnectFields,
    split_clients: split,
    workers: sortedWorkers,
    upgraded,
    broadcast_received: bReceived,
    broadcast_workers: sortNum(bWorkers),
    client_addresses_seen_ok: addrOk,
    // extra detail
    transport: opts.transport,
    broadcast_sent: broadcastSent,
    broadcast_from: sortNum(bFrom),
    ...reconnectExtra,
    upgrade_errors: upgradeErrors,
    echo_mismatches: echoMismatches,
    unexpected_disconnects: disconnects,
    address_mismatches: addrMismatches,
    timed_out: timedOut,
    elapsed_ms: Date.now() - started,
    errors: errorSamples,
  };
}

let printed = false;
function finish(code) {
  if (printed) return;
  printed = true;
  const line = JSON.stringify(summary()) + '\n';
  closing = true;
  for (const c of clients) {
    try { c.socket && c.socket.disconnect(); } catch (_) { /* ignore */ }
  }
  process.stdout.write(line, () => process.exit(code));
}

// --reconnect: clients retry until this timeout; running out of it is an
// outcome (failed_clients), not an error of load.js, so exit 0.
const overall = setTimeout(() => {
  timedOut = true;
  finish(opts.reconnect ? 0 : 1);
}, opts.timeoutMs);

async function main() {
  // connect in batches: each batch waits until all of its clients connected or failed
  // (--reconnect: every client starts its rounds as soon as it is connected, so
  // a client that keeps failing to connect holds up nobody's rounds, and all
  // clients are at work while the workers restart)
  const working = [];
  for (let start = 0; start < opts.clients; start += opts.batch) {
    const batch = [];
    for (let i = start; i < Math.min(opts.clients, start + opts.batch); i++) {
      const c = makeClient(i);
      clients.push(c);
      batch.push(c.ready);
      if (opts.reconnect) working.push(workReconnect(c));
    }
    await Promise.all(batch);
  }
  if (opts.readyFile) {
    require('node:fs').writeFileSync(opts.readyFile, `${clients.filter((c) => c.everConnected).length}\n`);
  }
  if (opts.reconnect) await Promise.all(working);
  else await pool(clients, opts.parallel || opts.batch, work);
  if (opts.broadcast) await doBroadcast();
  clearTimeout(overall);
  finish(0);
}

main().catch((err) => {
  sample(`fatal: ${err && err.stack ? err.stack : err}`);
  clearTimeout(overall);
  finish(1);
});
