/* The demo chat: one room per ?room= (default "lobby") on channel "chat:<room>".
 * Needs a [namespaces.chat] with history_size > 0, presence and join_leave (see
 * docs/clients.md). ?token= authenticates with the connect op when the server wants it.
 * window.demo exposes the client for tests and for the curious. */
(function () {
  "use strict";
  const params = new URLSearchParams(location.search);
  const room = params.get("room") || "lobby";
  const channel = "chat:" + room;
  const scheme = location.protocol === "https:" ? "wss://" : "ws://";
  const wsPath = document.documentElement.dataset.wsPath || "/ws";
  const $ = (id) => document.getElementById(id);
  $("room").textContent = room;
  $("name").value = localStorage.getItem("shardws-name") || "guest" + Math.floor(Math.random() * 1000);

  function line(text, cls) {
    const li = document.createElement("li");
    li.textContent = text;
    if (cls) li.className = cls;
    $("messages").appendChild(li);
    li.scrollIntoView({block: "end"});
  }

  let presenceTimer = null;
  async function refreshPresence() {
    try {
      const members = await client.presence(channel);
      $("online").textContent = String(members.length);
      const list = $("presence");
      list.replaceChildren(...members.map((m) => {
        const li = document.createElement("li");
        li.textContent = m.user || ("anonymous " + m.client.slice(-6));
        return li;
      }));
    } catch (e) {
      console.warn("presence failed", e);
    }
  }
  function presenceSoon() {
    clearTimeout(presenceTimer);
    presenceTimer = setTimeout(refreshPresence, 100);
  }

  const client = new ShardWS(scheme + location.host + wsPath, {
    token: params.get("token") || null,
    backoff: {initial: 0.5, factor: 2, cap: 10},
    onState: (state, detail) => {
      $("status").textContent = state;
      $("status").className = "status-" + state;
      if (state === "connected") {
        $("worker").textContent = String(detail.worker);
        $("reconnects").textContent = String(client.connects - 1);
        presenceSoon();
      }
    },
  });
  window.demo = {client: client, channel: channel};

  client.subscribe(channel, {
    onPublication: (pub) => {
      const d = pub.data || {};
      line((d.name || "?") + ": " + (d.text || ""), "msg");
    },
    onGap: () => line("(some messages were lost while you were away)", "gap"),
    onJoin: presenceSoon,
    onLeave: presenceSoon,
  }).then(async (sub) => {
    // Show the recent history once, then live messages follow.
    const page = await client.history(channel, {limit: 50, since: Math.max(0, sub.offset - 50)});
    const seen = page.publications.filter((p) => p.epoch === sub.epoch && p.offset <= sub.offset);
    // Before anything that arrived meanwhile: the history is older.
    const list = $("messages");
    for (const p of seen.reverse()) {
      const li = document.createElement("li");
      li.textContent = ((p.data || {}).name || "?") + ": " + ((p.data || {}).text || "");
      li.className = "msg old";
      list.insertBefore(li, list.firstChild);
    }
    window.demo.ready = true;
  }, (e) => line("cannot join " + channel + ": " + e.message, "gap"));

  $("form").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = $("text").value.trim();
    if (!text) return;
    const name = $("name").value.trim() || "guest";
    localStorage.setItem("shardws-name", name);
    $("text").value = "";
    client.publish(channel, {name: name, text: text}).catch((e) => line("not sent: " + e.message, "gap"));
  });
})();
