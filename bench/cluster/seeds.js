'use strict';
// One socket.io app behind each of the balancers the bench compares for Node workers:
//
//   node seeds.js sticky            a worker of `sticky cluster` (listens on $PORT)
//   node seeds.js sticky-session    sticky-session: its master proxies every socket
//   node seeds.js sticky-cluster    sticky-cluster: the same idea, another hash
//   node seeds.js socketio-sticky   @socket.io/sticky with @socket.io/cluster-adapter
//
// WORKERS workers (default 3), clients on PORT (default 3000). Every worker runs the same
// app: `echo` answers its payload through the acknowledgement. The bench's client
// (`sticky-bench load eio`) drives it over HTTP long-polling.

const cluster = require('node:cluster');
const http = require('node:http');
const { Server } = require('socket.io');

const mode = process.argv[2] || 'sticky';
const port = Number(process.env.PORT || 3000);
const workers = Number(process.env.WORKERS || 3);

function app(server) {
  const io = new Server(server, { transports: ['polling'] });
  io.on('connection', (socket) => {
    socket.on('echo', (payload, ack) => {
      if (typeof ack === 'function') ack(payload);
    });
  });
  return io;
}

// The bench waits for this line.
function ready() {
  console.log(`seeds ready: ${mode} on ${port} (${workers} workers)`);
}

// A master is ready once a handshake through it is answered (its workers are up).
function readyWhenServing() {
  const probe = () => {
    const req = http.get(
      { host: '127.0.0.1', port, path: '/socket.io/?EIO=4&transport=polling' },
      (res) => {
        res.resume();
        if (res.statusCode === 200) ready();
        else setTimeout(probe, 50);
      }
    );
    req.setTimeout(1000, () => req.destroy());
    req.on('error', () => setTimeout(probe, 50));
  };
  probe();
}

switch (mode) {
  case 'sticky': {
    const server = http.createServer();
    app(server);
    server.listen(port, ready);
    break;
  }
  case 'sticky-session': {
    const sticky = require('sticky-session');
    const server = http.createServer();
    if (!sticky.listen(server, port, { workers })) {
      server.once('listening', readyWhenServing);
    } else {
      app(server);
    }
    break;
  }
  case 'sticky-cluster': {
    require('sticky-cluster')(
      (callback) => {
        const server = http.createServer();
        app(server);
        callback(server);
      },
      { concurrency: workers, port, debug: false }
    );
    if (cluster.isPrimary) readyWhenServing();
    break;
  }
  case 'socketio-sticky': {
    const { setupMaster, setupWorker } = require('@socket.io/sticky');
    const { createAdapter, setupPrimary } = require('@socket.io/cluster-adapter');
    if (cluster.isPrimary) {
      const server = http.createServer();
      setupMaster(server, { loadBalancingMethod: 'least-connection' });
      setupPrimary();
      // As its README sets it up: 2.x hands each request's first bytes to the worker as a
      // Buffer, which the default (JSON) serialization turns into a plain object the worker
      // cannot replay, so every request through it got an empty reply.
      cluster.setupPrimary({ serialization: 'advanced' });
      server.listen(port, readyWhenServing);
      for (let i = 0; i < workers; i++) cluster.fork();
    } else {
      const server = http.createServer();
      const io = app(server);
      io.adapter(createAdapter());
      setupWorker(io);
    }
    break;
  }
  default:
    console.error(`unknown mode ${mode}`);
    process.exit(2);
}
