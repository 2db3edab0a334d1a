"""The bus layer: every ZeroMQ socket of the server side.

The host bus between the processes of one host (``host``), request/reply over it
(``requests``), the backends' ZeroMQ ingress (``ingress``) and CurveZMQ keys (``curve``).
The frame format itself is pure (``shardws.pure.busframe``), shared with the bridge.
"""
