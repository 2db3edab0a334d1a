"""Operator tools behind CLI subcommands: the load generator (``shardws bench``), host
tuning checks (``shardws tune``) and the systemd installer (``shardws install-service``).
They run outside the server's processes.
"""
