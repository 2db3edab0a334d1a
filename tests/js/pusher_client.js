// One pusher-js client (the real library, its Node build) driven by a test.
//
// Usage: node pusher_client.js '{"key": "...", "host": "127.0.0.1", "port": 1234,
//                                "authEndpoint": "http://...", "authParams": {...}}'
// Commands arrive on stdin, one JSON object a line:
//   {"op": "subscribe", "channel": "x"}            subscribe (auth through authEndpoint)
//   {"op": "unsubscribe", "channel": "x"}
//   {"op": "trigger", "channel": "x", "event": "client-e", "data": {...}}
//   {"op": "bind", "channel": "x", "event": "e"}   a per-event binding (sees user_id)
//   {"op": "signin"}                               pusher.signin() (userAuthEndpoint)
//   {"op": "exit"}                                 disconnect and exit
// Everything the client sees is printed on stdout, one JSON object a line:
//   {"type": "state", "previous": "...", "current": "..."}
//   {"type": "connected", "socket_id": "..."}
//   {"type": "error", "error": {...}}              pusher-js's connection error event
//   {"type": "event", "channel": "x", "event": "...", "data": ...}   (every event)
//   {"type": "bound", "channel": "x", "event": "...", "data": ..., "user_id": ...}
//   {"type": "subscribed", "channel": "x", "members": {...}}   (members: presence only)
//   {"type": "subscription_error", "channel": "x", "error": {...}}
//   {"type": "member_added" | "member_removed", "channel": "x", "id": "...", "info": ...}
//   {"type": "triggered", "channel": "x", "ok": true|false}
//   {"type": "cache_miss", "channel": "x"}          a cache channel had nothing to replay
//   {"type": "signed_in", "id": "..."}               signin done and #server-to-user- live
//   {"type": "user_event", "event": "...", "data": ...}   a send_to_user event
// The process exits by itself after 120 s, so a test that dies cannot leave it behind.

"use strict";

const readline = require("readline");
const Pusher = require("pusher-js");

const options = JSON.parse(process.argv[2]);
const print = (message) => process.stdout.write(JSON.stringify(message) + "\n");

Pusher.logToConsole = false;
const pusher = new Pusher(options.key, {
  cluster: "shardws", // required by the type, unused with wsHost
  wsHost: options.host,
  wsPort: options.port,
  forceTLS: false,
  enabledTransports: ["ws"],
  disableStats: true,
  activityTimeout: options.activityTimeout || 120000,
  channelAuthorization: {
    endpoint: options.authEndpoint || "http://127.0.0.1:9/none",
    transport: "ajax",
    params: options.authParams || {},
  },
  userAuthentication: {
    endpoint: options.userAuthEndpoint || "http://127.0.0.1:9/none",
    transport: "ajax",
    params: options.authParams || {},
  },
});
pusher.user.bind_global((event, data) => print({ type: "user_event", event: event, data: data }));

// pusher-js says nothing when its user channel is live: watch it (bounded: 10 s).
function reportSignedIn(tries) {
  const channel = pusher.user.serverToUserChannel;
  if (channel && channel.subscribed) print({ type: "signed_in", id: pusher.user.user_data.id });
  else if (tries > 0) setTimeout(() => reportSignedIn(tries - 1), 20);
}

pusher.connection.bind("state_change", (states) =>
  print({ type: "state", previous: states.previous, current: states.current }),
);
pusher.connection.bind("connected", () =>
  print({ type: "connected", socket_id: pusher.connection.socket_id }),
);
pusher.connection.bind("error", (error) => print({ type: "error", error: error }));

function members(channel) {
  if (!channel.members || !channel.name.startsWith("presence-")) return undefined;
  const all = {};
  channel.members.each((member) => (all[member.id] = member.info));
  return { count: channel.members.count, me: channel.members.me, all: all };
}

function subscribe(name) {
  const channel = pusher.subscribe(name);
  channel.bind("pusher:subscription_succeeded", () =>
    print({ type: "subscribed", channel: name, members: members(channel) }),
  );
  channel.bind("pusher:subscription_error", (error) =>
    print({ type: "subscription_error", channel: name, error: error }),
  );
  channel.bind("pusher:cache_miss", () => print({ type: "cache_miss", channel: name }));
  channel.bind("pusher:member_added", (member) =>
    print({ type: "member_added", channel: name, id: member.id, info: member.info }),
  );
  channel.bind("pusher:member_removed", (member) =>
    print({ type: "member_removed", channel: name, id: member.id, info: member.info }),
  );
  channel.bind_global((event, data) => {
    if (event.startsWith("pusher:") || event.startsWith("pusher_internal:")) return;
    print({
      type: "event",
      channel: name,
      event: event,
      data: data,
    });
  });
}

const commands = readline.createInterface({ input: process.stdin });
commands.on("line", (line) => {
  const command = JSON.parse(line);
  if (command.op === "subscribe") subscribe(command.channel);
  else if (command.op === "unsubscribe") pusher.unsubscribe(command.channel);
  else if (command.op === "signin") {
    pusher.signin();
    reportSignedIn(500);
  }
  else if (command.op === "bind") {
    // A per-event binding: pusher-js hands metadata (user_id) to these only.
    pusher.channel(command.channel).bind(command.event, (data, metadata) => {
      const user_id = metadata ? metadata.user_id : undefined;
      print({ type: "bound", channel: command.channel, event: command.event, data, user_id });
    });
    print({ type: "bind_done", channel: command.channel, event: command.event });
  }
  else if (command.op === "trigger") {
    const channel = pusher.channel(command.channel);
    const ok = channel ? channel.trigger(command.event, command.data) : false;
    print({ type: "triggered", channel: command.channel, ok: ok });
  } else if (command.op === "exit") {
    pusher.disconnect();
    setTimeout(() => process.exit(0), 100);
  }
});
commands.on("close", () => {
  pusher.disconnect();
  setTimeout(() => process.exit(0), 100);
});
setTimeout(() => process.exit(3), 120000).unref();
