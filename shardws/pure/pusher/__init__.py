"""The Pusher Channels protocol beside the native one: its decisions, without I/O.

One module one job (docs/pusher.md says what is supported):

* :mod:`.channels` -- channel names and kinds, socket ids;
* :mod:`.wire` -- client messages decoded into typed values, server messages encoded;
* :mod:`.signatures` -- channel auth and HTTP API request signatures;
* :mod:`.closecodes` -- the Pusher error and close codes, and the Pusher code of every
  native close reason;
* :mod:`.admission` -- the upgrade request ``/app/{key}?protocol=...`` admitted or refused;
* :mod:`.versions` -- what differs between the protocol versions served, 4 to 7;
* :mod:`.session` -- a connection's message in, one outcome out;
* :mod:`.presence` -- a presence channel's members as its owner keeps them (once per user);
* :mod:`.cache` -- cache channels' last events, with their TTL;
* :mod:`.httpapi` -- an HTTP API request in, a typed request or an error out.
"""
