'use strict';
// socket.io worker for `sticky cluster`.
//
//   sticky cluster --workers N --port 3000 -- node app.js
//
// sticky starts N copies of this file, each with its own PORT (3001, 3002, ...)
// and STICKY_WORKER_INDEX (0-based), and keeps every client on one worker.
// With REDIS_URL set (e.g. redis://127.0.0.1:6390) the workers share
// broadcasts through @socket.io/redis-adapter; without it each worker only
// reaches its own clients (in-memory adapter).
//
// Events:
//   whoami (ack)          -> ack({ worker, pid, address, addresses, xff, transport })
//   echo (payload, ack)   -> ack(payload)
//   broadcast (msg)       -> io.emit('news', { msg, from: worker })
// HTTP:
//   GET /health           -> 200 "ok"

const http = require('node:http');
const { Server } = require('socket.io');

const port = Number(process.env.PORT || 3000);
const host = process.env.HOST || '::';
const worker = Number(process.env.STICKY_WORKER_INDEX || 0);
const redisUrl = process.env.REDIS_URL || '';

function log(...args) {
  console.log(...args);
}

// Plain HTTP handler: only sees requests that socket.io does not take
// (socket.io takes everything under /socket.io/).
const httpServer = http.createServer((req, res) => {
  const path = (req.url || '/').split('?')[0];
  if (req.method === 'GET' && path === '/health') {
    res.writeHead(200, { 'content-type': 'text/plain' });
    res.end('ok');
    return;
  }
  res.writeHead(404, { 'content-type': 'text/plain' });
  res.end('not found');
});

const io = new Server(httpServer);

// Source addresses (and X-Forwarded-For values) seen for every engine.io
// session, over all of its HTTP requests (each long-polling request may be
// a new TCP connection) and its websocket upgrade. `whoami` reports them, so
// a test can check that a client's source address really is what it bound.
const seen = new Map(); // engine sid -> { addrs: Set, xff: Set }

io.engine.on('connection', (conn) => {
  const entry = { addrs: new Set([conn.remoteAddress]), xff: new Set() };
  const xff = conn.request && conn.request.headers['x-forwarded-for'];
  if (xff) entry.xff.add(String(xff));
  seen.set(conn.id, entry);
  conn.once('close', () => seen.delete(conn.id));
});

function track(req) {
  const url = req.url || '';
  const q = url.indexOf('?');
  if (q < 0) return;
  const sid = new URLSearchParams(url.slice(q + 1)).get('sid');
  if (!sid) return;
  const entry = seen.get(sid); // only sessions this worker knows
  if (!entry) return;
  entry.addrs.add(req.socket.remoteAddress);
  const xff = req.headers['x-forwarded-for'];
  if (xff) entry.xff.add(String(xff));
}
// Prepended after socket.io attached itself, so these run for every request
// and upgrade, before engine.io handles them.
httpServer.prependListener('request', track);
httpServer.prependListener('upgrade', track);

function lastFn(args) {
  const f = args[args.length - 1];
  return typeof f === 'function' ? f : null;
}

io.on('connection', (socket) => {
  socket.on('whoami', (...args) => {
    const ack = lastFn(args);
    if (!ack) return;
    const entry = seen.get(socket.conn.id);
    ack({
      worker,
      pid: process.pid,
      address: socket.handshake.address,
      addresses: entry ? [...entry.addrs] : [socket.handshake.address],
      xff: entry ? [...entry.xff] : [],
      transport: socket.conn.transport.name,
    });
  });

  socket.on('echo', (...args) => {
    const ack = lastFn(args);
    if (ack) ack(args.length > 1 ? args[0] : null);
  });

  socket.on('broadcast', (msg) => {
    io.emit('news', { msg, from: worker });
  });
});

let redisClients = [];

async function setupRedis() {
  const { createClient } = require('redis');
  const { createAdapter } = require('@socket.io/redis-adapter');
  const pub = createClient({ url: redisUrl });
  const sub = pub.duplicate();
  for (const [name, c] of [['pub', pub], ['sub', sub]]) {
    c.on('error', (err) => console.error(`worker ${worker}: redis ${name} error: ${err.message}`));
  }
  redisClients = [pub, sub];
  const timeoutMs = Number(process.env.REDIS_CONNECT_TIMEOUT_MS || 10000);
  let timer;
  await Promise.race([
    Promise.all([pub.connect(), sub.connect()]),
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`no connection to ${redisUrl} within ${timeoutMs} ms`)), timeoutMs);
    }),
  ]);
  clearTimeout(timer);
  io.adapter(createAdapter(pub, sub));
}

function listen() {
  return new Promise((resolve, reject) => {
    const onError = (err) => {
      httpServer.off('listening', onListening);
      // No IPv6 on this host: fall back to IPv4 any.
      if (host === '::' && (err.code === 'EAFNOSUPPORT' || err.code === 'EADDRNOTAVAIL')) {
        httpServer.once('error', reject);
        httpServer.once('listening', resolve);
        httpServer.listen({ port, host: '0.0.0.0' });
        return;
      }
      reject(err);
    };
    const onListening = () => {
      httpServer.off('error', onError);
      resolve();
    };
    httpServer.once('error', onError);
    httpServer.once('listening', onListening);
    // '::' with ipv6Only false is dual-stack: IPv4 clients arrive as ::ffff:a.b.c.d
    httpServer.listen({ port, host, ipv6Only: false });
  });
}

let stopping = false;
async function shutdown(signal) {
  if (stopping) return;
  stopping = true;
  log(`worker ${worker} got ${signal}, closing`);
  // Do not hang on a stuck client or Redis.
  setTimeout(() => {
    console.error(`worker ${worker}: shutdown took too long, exiting`);
    process.exit(1);
  }, 5000).unref();
  // io.close() closes every engine.io session, then the http server, which
  // waits for open HTTP connections; give those a second, then cut them.
  const cut = setTimeout(() => httpServer.closeAllConnections(), 1000);
  cut.unref();
  try {
    await new Promise((resolve) => io.close(() => resolve())); // also closes httpServer
  } catch (err) {
    console.error(`worker ${worker}: io.close: ${err.message}`);
  }
  for (const c of redisClients) {
    try {
      if (c.isOpen) await c.quit();
    } catch (err) {
      console.error(`worker ${worker}: redis quit: ${err.message}`);
    }
  }
  process.exit(0);
}
process.on('SIGTERM', () => shutdown('SIGTERM'));
process.on('SIGINT', () => shutdown('SIGINT'));

async function main() {
  if (redisUrl) {
    await setupRedis();
  }
  await listen();
  log(`worker ${worker} listening on ${port}`);
}

main().catch((err) => {
  console.error(`worker ${worker}: ${err.stack || err}`);
  process.exit(1);
});
