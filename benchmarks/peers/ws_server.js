'use strict';
/*
 * Broadcast server on Node's `ws` package (pinned in package.json): the usual Node pick.
 *
 * What a `ws` user writes for pub/sub in one process: a WebSocketServer on path /ws, a
 * Map of channel -> Set of sockets, JSON.parse of each command and a loop of
 * `socket.send(push)` over the subscribers. The push is serialized and encoded to a
 * Buffer once per publication and sent as text (`binary: false`), so `ws` only frames it
 * per subscriber; sending the string instead would re-encode it for every subscriber.
 *
 * Settings: maxPayload 64 KiB; perMessageDeflate off (shardws does not negotiate it);
 * `ws` sends no keepalive pings unless the application does, and this one does not (the
 * benchmarks measure fan-out); client pings are answered by `ws`. Other paths get 400
 * from `ws` (the upgrade is refused; plain HTTP gets 426), not 404.
 *
 * What a user might add: the optional native `bufferutil` addon speeds up unmasking
 * client frames (commands, all small here); it is left out so `npm ci` needs no compiler.
 *
 * Differences from shardws: publications are re-serialized (`data` is parsed and
 * stringified again); invalid UTF-8 closes with 1007 and oversized messages with 1009,
 * both done by `ws`. Unknown ops get error 104, other bad commands 107.
 *
 *     node benchmarks/peers/ws_server.js --host 127.0.0.1 --port 9004
 */

const { WebSocketServer } = require('ws');

const MAX_MESSAGE_SIZE = 64 * 1024;

function parseArgs(argv) {
  const args = { host: '127.0.0.1', port: 9004 };
  for (let i = 0; i < argv.length; i += 1) {
    if (argv[i] === '--host' && i + 1 < argv.length) {
      args.host = argv[(i += 1)];
    } else if (argv[i] === '--port' && i + 1 < argv.length) {
      args.port = Number.parseInt(argv[(i += 1)], 10);
    } else {
      process.stderr.write(`usage: node ws_server.js [--host HOST] [--port PORT]\n`);
      process.exit(2);
    }
  }
  if (!Number.isInteger(args.port) || args.port < 0 || args.port > 65535) {
    process.stderr.write(`bad --port\n`);
    process.exit(2);
  }
  return args;
}

const channels = new Map(); // channel -> Set<WebSocket>

function ok(id) {
  return JSON.stringify(id === undefined ? { ok: true } : { id, ok: true });
}

function error(id, code, message) {
  const reply = id === undefined ? {} : { id };
  reply.error = { code, message };
  return JSON.stringify(reply);
}

function unsubscribe(socket, channel) {
  const subscribers = channels.get(channel);
  if (subscribers !== undefined) {
    subscribers.delete(socket);
    if (subscribers.size === 0) channels.delete(channel);
  }
}

// Runs one command and returns the reply for its sender.
function handle(socket, subscribed, raw) {
  let command;
  try {
    command = JSON.parse(raw);
  } catch (err) {
    return error(undefined, 107, `malformed JSON: ${err.message}`);
  }
  if (command === null || typeof command !== 'object' || Array.isArray(command)) {
    return error(undefined, 107, 'command must be a JSON object');
  }
  const { id, op, channel } = command;
  if (op === 'publish') {
    if (typeof channel !== 'string' || !('data' in command)) {
      return error(id, 107, 'need channel and data');
    }
    const subscribers = channels.get(channel);
    if (subscribers !== undefined) {
      const push = Buffer.from(JSON.stringify({ type: 'pub', channel, data: command.data }));
      for (const subscriber of subscribers) {
        // send() on a closing socket would report an error through its callback;
        // skipping it is what the ws README's broadcast example does.
        if (subscriber.readyState === subscriber.OPEN) subscriber.send(push, { binary: false });
      }
    }
  } else if (op === 'subscribe') {
    if (typeof channel !== 'string') return error(id, 107, 'need channel');
    let subscribers = channels.get(channel);
    if (subscribers === undefined) {
      subscribers = new Set();
      channels.set(channel, subscribers);
    }
    subscribers.add(socket);
    subscribed.add(channel);
  } else if (op === 'unsubscribe') {
    if (typeof channel !== 'string') return error(id, 107, 'need channel');
    unsubscribe(socket, channel);
    subscribed.delete(channel);
  } else if (op !== 'ping') {
    return error(id, 104, `unknown op ${JSON.stringify(op)}`);
  }
  return ok(id);
}

function main() {
  const { host, port } = parseArgs(process.argv.slice(2));
  const wss = new WebSocketServer({
    host,
    port,
    path: '/ws',
    maxPayload: MAX_MESSAGE_SIZE,
    perMessageDeflate: false,
    clientTracking: true, // wss.clients, for closing them on shutdown
  });

  wss.on('connection', (socket) => {
    const subscribed = new Set();
    socket.on('message', (data) => {
      // data is a Buffer (text and binary alike); JSON.parse decodes it as UTF-8.
      socket.send(handle(socket, subscribed, data));
    });
    socket.on('error', () => {
      // Protocol errors (bad UTF-8, too big...): ws closes the socket itself; without a
      // listener the 'error' event would crash the process.
    });
    socket.on('close', () => {
      for (const channel of subscribed) unsubscribe(socket, channel);
      subscribed.clear();
    });
  });

  wss.on('listening', () => {
    // The bound port, so that --port 0 reports the one the kernel picked.
    process.stdout.write(`listening on ws://${host}:${wss.address().port}/ws\n`);
  });

  wss.on('error', (err) => {
    process.stderr.write(`ws_server: ${err.message}\n`);
    process.exit(1);
  });

  let stopping = false;
  const stop = () => {
    if (stopping) return;
    stopping = true;
    for (const socket of wss.clients) socket.close(1001, 'server shutdown');
    // Bounded: clients that do not finish the closing handshake are dropped.
    const timer = setTimeout(() => {
      for (const socket of wss.clients) socket.terminate();
    }, 2000);
    wss.close(() => {
      clearTimeout(timer);
      process.exit(0);
    });
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

main();
