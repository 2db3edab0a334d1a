"""The pure layer: what the server decides, with no I/O.

Wire codes and codecs (the native protocol, the bus frame, control messages), frames
into messages, the native session (a command in, an outcome out), tokens and
permissions, handshake decisions, permessage-deflate negotiation, the hub, history rings
and the sequencer, the backends' request parsers, cluster member ids. Nothing here opens
a socket, a file or a ZeroMQ context, or starts a task or a thread, so every module is
tested without sockets. It may use ``shardws.core`` (the hot-path
primitives), ``shardws.config`` (validated settings) and ``shardws.log``.
``tests/test_layers.py`` enforces this.
"""
