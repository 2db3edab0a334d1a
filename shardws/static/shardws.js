/* shardws.js: the browser client of shardws (no build step, no dependencies).
 *
 *   const client = new ShardWS("wss://example.com/ws", {getToken: () => fetchToken()});
 *   const sub = await client.subscribe("chat:lobby", {onPublication: (p) => show(p.data)});
 *   await client.publish("chat:lobby", {text: "hello"});
 *
 * Behaves like the Python client (shardws.client; docs/clients.md):
 * - authenticates with the `connect` op (browsers cannot send headers), token from
 *   `token` or `getToken()` (sync or async), refreshed with `refresh` before it expires;
 * - reconnects with exponential backoff and full jitter (backoff: {initial, factor, cap},
 *   seconds); the n-th consecutive attempt waits random() * min(cap, initial * factor^(n-1));
 *   a server `reconnect` push (drain) replaces that delay with the server's hint;
 * - never reconnects after a "do not reconnect" close (4000-4499, 1002, 1003, 1007-1010):
 *   the client is closed, `onClose` is called and waiting promises reject;
 * - resubscribes after a reconnect with `recover` from the last offset delivered; a gap
 *   the server cannot fill calls `onGap` (never silent); duplicates by offset are dropped;
 * - publishes while disconnected wait in a bounded queue (maxQueued; beyond it publish()
 *   rejects with a QueueFull error at once) and keep one `idem` key across retries;
 * - error 108 (a channel owner restarting, a subscribe not confirmed live) is retried
 *   with backoff, transparently;
 * - a dead path is found with an application `ping` every pingInterval seconds
 *   (browsers expose no WebSocket pings) that must be answered within pingTimeout;
 * - format: "msgpack" speaks the shardws.msgpack subprotocol (binary MessagePack frames):
 *   the codec (@msgpack/msgpack, served by the server at /msgpack.min.js) is loaded only
 *   then, or given as options.msgpack ({encode, decode}); data is handed over decoded in
 *   both formats (a JSON connection's `b64data` as a Uint8Array);
 * - subscribe(channel, handlers, {delta: "fossil"}) asks for fossil deltas (where the
 *   namespace allows them): they are applied here (applyDelta below), so onPublication
 *   always gets whole data; a delta that does not apply (counted in deltaFailures)
 *   reconnects and recovers.
 */
(function (global) {
  "use strict";

  const NOT_AVAILABLE = 108;
  const FATAL_STANDARD = new Set([1002, 1003, 1007, 1008, 1009, 1010]);

  function shouldReconnect(code) {
    return !((code >= 4000 && code <= 4499) || FATAL_STANDARD.has(code));
  }

  function dataOf(push) {
    // Whole-binary data of a MessagePack publisher reaches JSON connections as b64data.
    if (typeof push.b64data !== "string") return push.data;
    return Uint8Array.from(atob(push.b64data), (c) => c.charCodeAt(0));
  }

  // Fossil delta apply (the format of Fossil SCM's delta.c, which npm fossil-delta and
  // shardws.core make): "<size>\n", then "<n>@<offset>," (copy from the base) and
  // "<n>:<bytes>" (insert), then "<checksum>;"; integers in Fossil's base-64 digits.
  // Throws when the delta does not fit the base (malformed, another base, bad checksum).
  const DIGIT_VALUE = new Int8Array(256).fill(-1);
  "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz~"
    .split("")
    .forEach((c, i) => (DIGIT_VALUE[c.charCodeAt(0)] = i));

  function deltaChecksum(bytes) {
    let sum = 0;
    const n = bytes.length;
    for (let i = 0; i < n; i += 4) {
      const word = ((bytes[i] << 24) | ((bytes[i + 1] || 0) << 16) | ((bytes[i + 2] || 0) << 8) | (bytes[i + 3] || 0)) >>> 0;
      sum = (sum + word) >>> 0;
    }
    return sum;
  }

  function applyDelta(base, delta) {
    let at = 0;
    const int = () => {
      const start = at;
      let value = 0;
      while (at < delta.length && DIGIT_VALUE[delta[at]] >= 0) value = value * 64 + DIGIT_VALUE[delta[at++]];
      if (at === start || at - start > 8) throw new Error("bad delta: integer at byte " + start);
      return value;
    };
    const size = int();
    if (delta[at++] !== 10) throw new Error("bad delta: no newline after the size");
    const out = new Uint8Array(size);
    let total = 0;
    while (at < delta.length) {
      const count = int();
      const op = delta[at++];
      if (op === 64) { // '@' copy
        const offset = int();
        if (delta[at++] !== 44) throw new Error("bad delta: copy not terminated by ','");
        if (total + count > size || offset + count > base.length) throw new Error("bad delta: copy out of range");
        out.set(base.subarray(offset, offset + count), total);
        total += count;
      } else if (op === 58) { // ':' insert
        if (total + count > size || at + count > delta.length) throw new Error("bad delta: insert out of range");
        out.set(delta.subarray(at, at + count), total);
        total += count;
        at += count;
      } else if (op === 59) { // ';' checksum
        if (at !== delta.length || total !== size) throw new Error("bad delta: size mismatch");
        if (count !== deltaChecksum(out)) throw new Error("bad delta: bad checksum");
        return out;
      } else {
        throw new Error("bad delta: unknown operator");
      }
    }
    throw new Error("bad delta: unterminated");
  }

  function loadMessagePack(wsUrl) {
    if (global.MessagePack) return Promise.resolve(global.MessagePack);
    const origin = wsUrl.replace(/^ws/, "http").replace(/^(https?:\/\/[^/]+).*$/, "$1");
    return new Promise((resolve, reject) => {
      const script = document.createElement("script");
      script.src = origin + "/msgpack.min.js";
      script.onload = () => resolve(global.MessagePack);
      script.onerror = () => reject(new Error("could not load " + script.src));
      document.head.appendChild(script);
    });
  }

  function tokenExpiry(token) {
    if (!token) return null;
    const parts = token.split(".");
    if (parts.length !== 3) return null;
    try {
      const json = atob(parts[1].replace(/-/g, "+").replace(/_/g, "/"));
      const exp = JSON.parse(json).exp;
      return typeof exp === "number" ? exp : null;
    } catch (e) {
      return null;
    }
  }

  class ShardWSError extends Error {
    constructor(name, message, code) {
      super(message);
      this.name = name;
      this.code = code;
    }
  }

  class LinkLost extends Error {}

  const sleep = (seconds) => new Promise((resolve) => setTimeout(resolve, seconds * 1000));

  class Subscription {
    constructor(client, channel, handlers, delta) {
      this.client = client;
      this.channel = channel;
      this.handlers = handlers;
      this.delta = delta || null; // "fossil": pushes carry the data's bytes, or a delta
      this._base = null; // the bytes of the last publication's data (a delta's base)
      this.deltas = 0; // publications received as deltas and applied
      this.deltaFailures = 0; // deltas that did not apply (each reconnects and recovers)
      this.epoch = null;
      this.offset = 0;
      // The last offset delivered in each of the latest epochs followed: after a
      // partition heals the numbering may come back to one, and nothing of it comes twice.
      this._epochs = new Map();
      this.gaps = 0;
      this.recoveries = 0;
      this.active = true;
    }

    unsubscribe() {
      return this.client.unsubscribe(this.channel);
    }

    _call(name, arg) {
      const handler = this.handlers[name];
      if (!handler) return;
      try {
        handler(arg);
      } catch (e) {
        console.error("shardws: " + name + " handler failed", e);
      }
    }

    // False when the offset shows a gap: the caller reconnects, which recovers.
    _takePub(message) {
      const offset = message.offset, epoch = message.epoch;
      if (typeof offset === "number" && typeof epoch === "string") {
        if (epoch !== this.epoch && this._epochs.has(epoch)) {
          // Back to an epoch followed before: continue it where this subscription left it.
          this.epoch = epoch;
          this.offset = this._epochs.get(epoch);
        }
        if (epoch === this.epoch) {
          if (offset <= this.offset) {
            if (this.delta) try { this._wholeData(message); } catch (e) { this._base = null; }
            return true; // already delivered: never twice
          }
          if (offset !== this.offset + 1) return false;
        }
      }
      let data;
      try {
        data = this.delta ? this._wholeData(message) : dataOf(message);
      } catch (e) {
        this.deltaFailures += 1;
        this._base = null;
        console.warn("shardws: channel " + this.channel + ": a delta did not apply, recovering", e);
        return false;
      }
      if (typeof offset === "number" && typeof epoch === "string") {
        if (epoch !== this.epoch && this.epoch !== null) {
          this._gap({channel: this.channel, epoch: epoch, offset: offset - 1, reason: "epoch_changed"});
        }
        this._move(epoch, offset);
      }
      this._call("onPublication", {channel: this.channel, data: data, offset: offset, epoch: epoch});
      return true;
    }

    // A delta subscription's push: the data's bytes (a JSON string on a JSON connection,
    // bin on a MessagePack one), or with delta: true a fossil delta against the last.
    _wholeData(message) {
      if (typeof message.b64data === "string") {
        this._base = null; // whole-binary data has no delta form
        return dataOf(message);
      }
      const json = this.client.format !== "msgpack";
      let bytes = json ? new TextEncoder().encode(message.data) : message.data;
      if (!(bytes instanceof Uint8Array)) throw new Error("a delta subscription's data is not bytes");
      if (message.delta === true) {
        if (this._base === null) throw new Error("a delta without a base");
        bytes = applyDelta(this._base, bytes);
        this.deltas += 1;
      }
      this._base = bytes;
      return json ? JSON.parse(new TextDecoder().decode(bytes)) : this.client._codec.decode(bytes);
    }

    _positioned(reply, recovering) {
      if (typeof reply.epoch !== "string" || typeof reply.offset !== "number") return;
      if (recovering && reply.recovered === true) {
        this.recoveries += 1;
        return; // the missed publications follow and move the position
      }
      const delivered = this._epochs.get(reply.epoch);
      if (recovering && delivered !== undefined && reply.offset <= delivered) {
        // Already delivered up to there (the previous connection got the epoch's first
        // publications after this resubscribe was sent): nothing is missing.
        this._move(reply.epoch, delivered);
        return;
      }
      if (recovering) {
        this._gap({channel: this.channel, epoch: reply.epoch, offset: reply.offset, reason: reply.reason || null});
      }
      this._move(reply.epoch, reply.offset);
    }

    _move(epoch, offset) {
      this.epoch = epoch;
      this.offset = offset;
      this._epochs.delete(epoch);
      this._epochs.set(epoch, offset); // the latest last: the oldest go first
      while (this._epochs.size > 8) this._epochs.delete(this._epochs.keys().next().value);
    }

    _gap(gap) {
      this.gaps += 1;
      if (this.handlers.onGap) this._call("onGap", gap);
      else console.warn("shardws: publications of " + gap.channel + " were lost", gap);
    }
  }

  class ShardWS {
    constructor(url, options) {
      options = options || {};
      this.url = url;
      this.token = options.token || null;
      this.getToken = options.getToken || null;
      this.backoff = Object.assign({initial: 0.5, factor: 2, cap: 30}, options.backoff || {});
      this.maxQueued = options.maxQueued === undefined ? 1000 : options.maxQueued;
      this.refreshBefore = options.refreshBefore || 30;
      this.unavailableTimeout = options.unavailableTimeout || 30;
      this.pingInterval = options.pingInterval || 20;
      this.pingTimeout = options.pingTimeout || 10;
      this.onState = options.onState || null; // ("connecting"|"connected"|"disconnected"|"closed", detail)
      this.onClose = options.onClose || null;
      this.onUserMessage = options.onUserMessage || null;
      if (options.format && options.format !== "json" && options.format !== "msgpack") {
        throw new Error('format must be "json" or "msgpack", got ' + options.format);
      }
      this.format = options.format || "json";
      this._codec = options.msgpack || null; // {encode, decode}, loaded when needed
      this.worker = null;
      this.clientId = "";
      this.attempts = 0;
      this.connects = 0;
      this.hintsFollowed = 0;
      this.lastClose = null;
      this.closed = null; // {code, reason} once closed for good
      this.subscriptions = new Map();
      this._ws = null;
      this._ready = false;
      this._waiters = [];
      this._pending = new Map();
      this._ids = 1;
      this._idemPrefix = Math.random().toString(16).slice(2, 10) + Date.now().toString(16);
      this._idems = 1;
      this._queued = 0;
      this._history = new Map();
      this._timers = new Set();
      this._run();
    }

    get connected() {
      return this._ready && this.closed === null;
    }

    // -- connection -----------------------------------------------------------------

    _delay(attempt) {
      const b = this.backoff;
      const window = Math.min(b.cap, b.initial * Math.pow(b.factor, Math.min(attempt - 1, 64)));
      return Math.random() * window;
    }

    _state(state, detail) {
      if (this.onState) {
        try {
          this.onState(state, detail);
        } catch (e) {
          console.error("shardws: onState failed", e);
        }
      }
    }

    async _run() {
      let failures = 0;
      let hint = null;
      let refuseToken = false;
      while (this.closed === null) {
        if (hint !== null) {
          this.hintsFollowed += 1;
          await sleep(hint);
          hint = null;
        } else if (failures) {
          await sleep(this._delay(failures));
        }
        if (this.closed !== null) return;
        failures += 1;
        this.attempts += 1;
        this._state("connecting", {attempt: this.attempts});
        let link;
        try {
          await this._freshToken(refuseToken);
          if (this.format === "msgpack" && !this._codec) this._codec = await loadMessagePack(this.url);
          link = await this._open();
        } catch (e) {
          if (e instanceof ShardWSError && e.name === "ClientClosed") {
            if (e.code === 4001 && this.getToken && !refuseToken) {
              refuseToken = true; // the token was refused: one more try with a fresh one
              continue;
            }
            this._fail(e.code, e.message);
            return;
          }
          continue;
        }
        refuseToken = false;
        try {
          await this._resubscribe(link);
          failures = 1; // its loss counts as the first failure: a jittered first retry
          this.connects += 1;
          this._ready = true;
          this._wake();
          this._state("connected", {worker: this.worker});
          this._scheduleRefresh(link);
          this._schedulePing(link);
        } catch (e) {
          if (!(e instanceof LinkLost)) console.error("shardws: resubscribe failed", e);
        }
        await link.closed;
        this._ready = false;
        this._ws = null;
        this.lastClose = {code: link.code, reason: link.reason};
        if (this.closed !== null) return;
        if (!shouldReconnect(link.code)) {
          this._fail(link.code, link.reason);
          return;
        }
        if (link.code === 4503) refuseToken = true;
        hint = link.hint;
        this._state("disconnected", {code: link.code, reason: link.reason});
      }
    }

    _open() {
      return new Promise((resolve, reject) => {
        const binary = this.format === "msgpack";
        const ws = binary ? new WebSocket(this.url, ["shardws.msgpack"]) : new WebSocket(this.url);
        if (binary) ws.binaryType = "arraybuffer";
        const link = {ws: ws, code: 1006, reason: "", hint: null, pending: new Map(), finished: false};
        let settled = false;
        link.closed = new Promise((done) => { link.markClosed = done; });
        const fail = (error) => {
          if (!settled) {
            settled = true;
            reject(error);
          }
        };
        const timer = setTimeout(() => { fail(new Error("connect timeout")); ws.close(); }, 10000);
        ws.onmessage = (event) => {
          if (link.finished) return;
          let message;
          try {
            if (binary !== (typeof event.data !== "string")) return;
            message = binary ? this._codec.decode(new Uint8Array(event.data)) : JSON.parse(event.data);
          } catch (e) {
            return;
          }
          if (message.type === "connected" && !settled) {
            this.worker = message.worker;
            this.clientId = message.client;
            this._ws = link;
            if (!this.token) {
              settled = true;
              clearTimeout(timer);
              resolve(link);
              return;
            }
            this._request(link, "connect", {token: this.token}).then(
              () => { settled = true; clearTimeout(timer); resolve(link); },
              (e) => { clearTimeout(timer); fail(e); });
            return;
          }
          this._onMessage(link, message);
        };
        link.finish = (code, reason) => {
          if (link.finished) return;
          link.finished = true;
          clearTimeout(timer);
          link.code = code;
          link.reason = reason;
          for (const entry of link.pending.values()) entry.reject(new LinkLost());
          link.pending.clear();
          if (this._ws === link) this._ready = false;
          link.markClosed();
          if (!settled && !shouldReconnect(code)) {
            fail(new ShardWSError("ClientClosed", reason || "closed by the server", code));
          }
          fail(new Error("closed before connected: " + code));
        };
        ws.onclose = (event) => link.finish(event.code, event.reason);
      });
    }

    async _resubscribe(link) {
      const subs = Array.from(this.subscriptions.values());
      const results = await Promise.allSettled(subs.map((sub) => this._subscribeOn(link, sub)));
      results.forEach((result, i) => {
        if (result.status === "rejected") {
          if (result.reason instanceof LinkLost) throw result.reason;
          this.subscriptions.delete(subs[i].channel);
          subs[i].active = false;
          subs[i]._call("onError", result.reason);
        }
      });
    }

    async _subscribeOn(link, sub) {
      const fields = {channel: sub.channel};
      if (sub.delta) {
        fields.delta = sub.delta;
        sub._base = null; // a new subscription: its first publication comes whole
      }
      const recovering = sub.epoch !== null;
      if (recovering) fields.recover = {epoch: sub.epoch, offset: sub.offset};
      const reply = await this._requestRetrying(link, "subscribe", fields);
      this._learn(sub.channel, reply);
      sub._positioned(reply, recovering);
    }

    _fail(code, reason) {
      if (this.closed !== null) return;
      this.closed = {code: code, reason: reason};
      for (const timer of this._timers) clearTimeout(timer);
      this._timers.clear();
      this.subscriptions.clear();
      this._wake();
      this._state("closed", this.closed);
      if (this.onClose) this.onClose(this.closed);
    }

    close() {
      this._fail(1000, "closed by the client");
      if (this._ws) this._ws.ws.close(1000);
    }

    // Close a connection the client gave up on; it counts as lost (1006): reconnect.
    _drop(link) {
      link.finish(1006, "dropped by the client");
      try {
        link.ws.close();
      } catch (e) {
        // already closing
      }
    }

    _wake() {
      const waiters = this._waiters;
      this._waiters = [];
      for (const wake of waiters) wake();
    }

    async _waitReady() {
      for (;;) {
        if (this.closed !== null) {
          throw new ShardWSError("ClientClosed", "closed: " + this.closed.code + " " + this.closed.reason, this.closed.code);
        }
        if (this._ready && this._ws) return this._ws;
        await new Promise((wake) => this._waiters.push(wake));
      }
    }

    // -- commands -------------------------------------------------------------------

    _request(link, op, fields) {
      return new Promise((resolve, reject) => {
        if (link.ws.readyState !== WebSocket.OPEN) {
          reject(new LinkLost());
          return;
        }
        const id = this._ids++;
        link.pending.set(id, {resolve: resolve, reject: reject});
        const command = Object.assign({id: id, op: op}, fields);
        link.ws.send(this.format === "msgpack" ? this._codec.encode(command) : JSON.stringify(command));
      });
    }

    async _requestRetrying(link, op, fields) {
      const deadline = Date.now() + this.unavailableTimeout * 1000;
      for (let attempt = 1; ; attempt++) {
        const reply = await this._request(link, op, fields);
        if (!reply.error) return reply;
        if (reply.error.code !== NOT_AVAILABLE || Date.now() >= deadline) {
          throw new ShardWSError("ServerError", reply.error.message, reply.error.code);
        }
        await sleep(this._delay(attempt));
      }
    }

    async _call(op, fields) {
      for (;;) {
        const link = await this._waitReady();
        try {
          return await this._requestRetrying(link, op, fields);
        } catch (e) {
          if (!(e instanceof LinkLost)) throw e;
        }
      }
    }

    _namespace(channel) {
      const colon = channel.indexOf(":");
      return colon >= 0 ? channel.slice(0, colon) : "default";
    }

    _learn(channel, reply) {
      this._history.set(this._namespace(channel), typeof reply.epoch === "string");
    }

    /** Resolves once the subscription is live. handlers: onPublication({channel, data,
     * offset, epoch}), onGap({channel, epoch, offset, reason}), onJoin / onLeave({user, client}),
     * onError(error) when a resubscribe is refused. options: {delta: "fossil"} for
     * publications as deltas, applied here (the handlers still get whole data). */
    async subscribe(channel, handlers, options) {
      if (this.subscriptions.has(channel)) {
        throw new ShardWSError("ServerError", "already subscribed", 105);
      }
      const sub = new Subscription(this, channel, handlers || {}, (options || {}).delta);
      for (;;) {
        const link = await this._waitReady();
        this.subscriptions.set(channel, sub);
        try {
          await this._subscribeOn(link, sub);
          return sub;
        } catch (e) {
          if (!(e instanceof LinkLost)) {
            this.subscriptions.delete(channel);
            throw e;
          }
          await this._waitReady(); // the reconnect resubscribes it
          if (this.subscriptions.get(channel) === sub) return sub;
          throw new ShardWSError("ServerError", "subscription to " + channel + " ended", 0);
        }
      }
    }

    async unsubscribe(channel) {
      const sub = this.subscriptions.get(channel);
      if (!sub) return;
      this.subscriptions.delete(channel);
      sub.active = false;
      if (this._ready && this._ws) {
        try {
          await this._request(this._ws, "unsubscribe", {channel: channel});
        } catch (e) {
          if (!(e instanceof LinkLost)) throw e;
        }
      }
    }

    async publish(channel, data, options) {
      if (this.closed !== null) await this._waitReady(); // throws ClientClosed
      if (!this.connected && this._queued >= this.maxQueued) {
        throw new ShardWSError("QueueFull", this.maxQueued + " publishes already wait for the connection", 0);
      }
      const idem = (options && options.idem) || this._idemPrefix + "-" + this._idems++;
      const fields = {channel: channel, data: data, idem: idem};
      for (;;) {
        let link;
        if (!this.connected) {
          this._queued += 1;
          try {
            link = await this._waitReady();
          } finally {
            this._queued -= 1;
          }
        } else {
          link = this._ws;
        }
        try {
          const reply = await this._requestRetrying(link, "publish", fields);
          this._learn(channel, reply);
          return reply;
        } catch (e) {
          if (!(e instanceof LinkLost)) throw e;
          if (this._history.get(this._namespace(channel)) === false) {
            throw new ShardWSError("DeliveryUnknown", "connection lost before the reply to a publish to " + channel, 0);
          }
        }
      }
    }

    async history(channel, options) {
      options = options || {};
      const reply = await this._call("history", {
        channel: channel,
        since: options.since || 0,
        limit: options.limit || 100,
        reverse: !!options.reverse,
      });
      for (const pub of reply.publications) {
        pub.data = dataOf(pub);
        delete pub.b64data;
      }
      return reply;
    }

    async presence(channel) {
      return (await this._call("presence", {channel: channel})).members;
    }

    async presenceStats(channel) {
      const reply = await this._call("presence_stats", {channel: channel});
      return {clients: reply.clients, users: reply.users};
    }

    // -- timers ---------------------------------------------------------------------

    _timer(seconds, fn) {
      const timer = setTimeout(() => { this._timers.delete(timer); fn(); }, seconds * 1000);
      this._timers.add(timer);
    }

    _schedulePing(link) {
      this._timer(this.pingInterval, () => {
        if (this._ws !== link) return;
        const answered = this._request(link, "ping", {});
        const timeout = sleep(this.pingTimeout).then(() => "timeout");
        Promise.race([answered, timeout]).then((result) => {
          if (result === "timeout" && this._ws === link) this._drop(link); // a dead path
          else this._schedulePing(link);
        }, () => {});
      });
    }

    async _newToken() {
      const token = await this.getToken();
      if (typeof token !== "string" || !token) throw new Error("getToken returned no token");
      return token;
    }

    async _freshToken(force) {
      if (!this.getToken) return;
      const expiry = tokenExpiry(this.token);
      if (force || !this.token || (expiry !== null && expiry - Date.now() / 1000 < 1)) {
        this.token = await this._newToken();
      }
    }

    _scheduleRefresh(link) {
      const expiry = tokenExpiry(this.token);
      if (!this.getToken || expiry === null) return;
      const remaining = expiry - Date.now() / 1000;
      const wait = Math.max(0, remaining - Math.min(this.refreshBefore, remaining / 2));
      this._timer(wait, async () => {
        if (this._ws !== link) return;
        try {
          const token = await this._newToken();
          const reply = await this._request(link, "refresh", {token: token});
          if (!reply.error) this.token = token;
        } catch (e) {
          if (e instanceof LinkLost) return;
          console.warn("shardws: token refresh failed", e);
        }
        this._scheduleRefresh(link);
      });
    }

    // -- pushes ---------------------------------------------------------------------

    _onMessage(link, message) {
      const type = message.type;
      if (type === undefined) {
        const entry = link.pending.get(message.id);
        if (entry) {
          link.pending.delete(message.id);
          entry.resolve(message);
        }
        return;
      }
      if (type === "pub") {
        if (message.channel === undefined) {
          if (this.onUserMessage) this.onUserMessage(dataOf(message));
          return;
        }
        const sub = this.subscriptions.get(message.channel);
        if (sub && !sub._takePub(message)) this._drop(link); // a gap: reconnect and recover
      } else if (type === "join" || type === "leave") {
        const sub = this.subscriptions.get(message.channel);
        if (sub) sub._call(type === "join" ? "onJoin" : "onLeave", {user: message.user, client: message.client});
      } else if (type === "reconnect") {
        if (typeof message.delay === "number" && message.delay >= 0 && message.delay <= 3600) {
          link.hint = message.delay;
        }
      }
    }
  }

  ShardWS.shouldReconnect = shouldReconnect;
  ShardWS.tokenExpiry = tokenExpiry;
  ShardWS.Error = ShardWSError;
  ShardWS.Subscription = Subscription;
  ShardWS.applyDelta = applyDelta;
  global.ShardWS = ShardWS;
})(typeof window !== "undefined" ? window : globalThis);
