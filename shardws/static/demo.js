/* The demo chat: one room per ?room= (default "lobby") on channel "chat:<room>".
 * Needs a [namespaces.chat] with history_size > 0, presence and join_leave (see
 * docs/clients.md). ?token= authenticates with the connect op when the server wants it.
 * window.demo exposes the client for tests and for the curious.
 *
 * Names: presence carries the token's user, or nothing for anonymous connections. Those
 * are shown as "guest <4 hex of the client id>" (stable for the connection) until one of
 * their messages names them: messages carry {name, text, client}. The name typed in the
 * page is kept in localStorage; without one, messages go out under the guest label. */
(function () {
  "use strict";
  const params = new URLSearchParams(location.search);
  const room = params.get("room") || "lobby";
  const channel = "chat:" + room;
  const scheme = location.protocol === "https:" ? "wss://" : "ws://";
  const wsPath = document.documentElement.dataset.wsPath || "/ws";
  const $ = (id) => document.getElementById(id);
  $("room").textContent = room;
  $("name").value = localStorage.getItem("shardws-name") || "";

  // FNV-1a: a short label that is the same in every page for the same connection. The
  // final mix (murmur3's) spreads the last character, which is all that differs between
  // the sequential ids of one worker.
  function guestLabel(clientId) {
    let hash = 0x811c9dc5;
    for (let i = 0; i < clientId.length; i++) {
      hash = Math.imul(hash ^ clientId.charCodeAt(i), 0x01000193);
    }
    hash = Math.imul(hash ^ (hash >>> 16), 0x85ebca6b);
    hash = Math.imul(hash ^ (hash >>> 13), 0xc2b2ae35);
    hash ^= hash >>> 16;
    return "guest " + ((hash >>> 16) & 0xffff).toString(16).padStart(4, "0");
  }

  const names = new Map(); // client id -> the name its messages carry
  const mine = new Set(); // this page's client ids, one per connection so far
  let members = null; // the last presence reply (patched by join/leave), null before the first
  let view = 0; // bumped on every state change: replies meant for an older state are dropped

  function ownName() {
    return $("name").value.trim() || (client.clientId ? guestLabel(client.clientId) : "guest");
  }

  function memberName(m) {
    return m.user || names.get(m.client) || guestLabel(m.client);
  }

  function renderPresence() {
    if (members === null) return;
    const me = client.clientId;
    const sorted = members.slice().sort((a, b) =>
      (b.client === me) - (a.client === me) || memberName(a).localeCompare(memberName(b)));
    $("online").textContent = String(members.length);
    $("presence").replaceChildren(...sorted.map((m) => {
      const li = document.createElement("li");
      if (m.client === me) {
        li.className = "me";
        li.textContent = m.user || ownName();
        const tag = document.createElement("span");
        tag.className = "you";
        tag.textContent = "you";
        li.appendChild(tag);
      } else {
        li.textContent = memberName(m);
      }
      li.title = m.client;
      return li;
    }));
  }

  function showStatus(state) {
    $("status").textContent = state;
    $("status").className = "status-" + state;
    document.body.dataset.state = state;
  }

  // Renders "<name>: <text>" (the tests read that text) with the name emphasised.
  function messageItem(data, cls) {
    const d = data || {};
    if (typeof d.client === "string" && typeof d.name === "string" && d.name) {
      names.set(d.client, d.name);
    }
    const li = document.createElement("li");
    const who = document.createElement("span");
    who.className = "who";
    who.textContent = d.name || "?";
    li.append(who, ": " + (d.text || ""));
    li.className = cls + (mine.has(d.client) ? " mine" : "");
    return li;
  }

  function line(text, cls) {
    const li = document.createElement("li");
    li.textContent = text;
    li.className = cls;
    $("messages").appendChild(li);
    li.scrollIntoView({block: "end"});
  }

  let presenceTimer = null;
  async function refreshPresence() {
    const current = view;
    try {
      const reply = await client.presence(channel);
      if (current !== view) return;
      members = reply;
      renderPresence();
    } catch (e) {
      console.warn("presence failed", e);
    }
  }
  function presenceSoon() {
    clearTimeout(presenceTimer);
    presenceTimer = setTimeout(refreshPresence, 100);
  }

  let joined = null; // settles once the room is joined and its recent history shown
  const client = new ShardWS(scheme + location.host + wsPath, {
    token: params.get("token") || null,
    backoff: {initial: 0.5, factor: 2, cap: 10},
    onState: (state, detail) => {
      const current = ++view;
      if (state !== "connected") {
        showStatus(state);
        return;
      }
      mine.add(client.clientId);
      $("name").placeholder = guestLabel(client.clientId);
      // "connected" shows together with this connection's presence, in one paint: never
      // next to a count that does not include this page yet, nor before the history has
      // told the names of those who spoke.
      joined.then(() => client.presence(channel)).then((reply) => {
        if (current !== view) return;
        members = reply;
        showStatus(state);
        $("worker").textContent = String(detail.worker);
        $("reconnects").textContent = String(client.connects - 1);
        renderPresence();
      }, (e) => {
        if (current !== view) return;
        console.warn("presence failed", e);
        showStatus(state);
        $("worker").textContent = String(detail.worker);
        $("reconnects").textContent = String(client.connects - 1);
      });
    },
  });
  window.demo = {client: client, channel: channel};

  const subscribed = client.subscribe(channel, {
    onPublication: (pub) => {
      const li = messageItem(pub.data, "msg");
      $("messages").appendChild(li);
      li.scrollIntoView({block: "end"});
      renderPresence(); // the message may have named a member
    },
    onGap: () => line("(some messages were lost while you were away)", "gap"),
    onJoin: (m) => {
      if (members !== null && !members.some((x) => x.client === m.client)) {
        members.push({user: m.user, client: m.client, info: null});
        renderPresence();
      }
      presenceSoon();
    },
    onLeave: (m) => {
      if (members !== null) {
        members = members.filter((x) => x.client !== m.client);
        renderPresence();
      }
      presenceSoon();
    },
  });
  joined = subscribed.then(async (sub) => {
    // Show the recent history once, then live messages follow.
    const page = await client.history(channel, {limit: 50, since: Math.max(0, sub.offset - 50)});
    const seen = page.publications.filter((p) => p.epoch === sub.epoch && p.offset <= sub.offset);
    // Before anything that arrived meanwhile: the history is older.
    const list = $("messages");
    for (const p of seen.reverse()) {
      list.insertBefore(messageItem(p.data, "msg old"), list.firstChild);
    }
    if (list.lastChild) list.lastChild.scrollIntoView({block: "end"});
    window.demo.ready = true;
  }).catch((e) => line("cannot join " + channel + ": " + e.message, "gap"));

  $("name").addEventListener("input", renderPresence);
  $("form").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = $("text").value.trim();
    if (!text) return;
    const typed = $("name").value.trim();
    if (typed) localStorage.setItem("shardws-name", typed);
    else localStorage.removeItem("shardws-name");
    $("text").value = "";
    const data = {name: ownName(), text: text, client: client.clientId};
    client.publish(channel, data).catch((e) => line("not sent: " + e.message, "gap"));
  });
})();
