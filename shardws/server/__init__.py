"""The server processes: the supervisor and what it forks.

The supervisor (``supervisor``), workers (``worker``, with ``owners`` for history and
presence), the admin (``admin``: HTTP API, ingress, ``/metrics`` via ``metrics``) and the
cluster bridge (``bridge``); and the process-level helpers they use (``static`` files on
the WebSocket port, ``steering`` of new connections, ``systemd`` notification).
"""
