// A `sticky cluster` test worker: answers every request with its index, pid and the client
// address it saw, so tests can tell which worker served whom.
'use strict';
const http = require('http');
const index = process.env.STICKY_WORKER_INDEX;
const server = http.createServer((req, res) => {
  const addr = req.socket.remoteAddress.replace(/^::ffff:/, '');
  const body = `w${index}-${process.pid} ${addr}\n`;
  res.writeHead(200, { 'content-length': Buffer.byteLength(body), connection: 'close' });
  res.end(body);
});
server.listen(Number(process.env.PORT), '0.0.0.0');
process.on('SIGTERM', () => server.close(() => process.exit(0)));
