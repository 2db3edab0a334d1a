"""The shared-memory layer: tables the supervisor creates before it forks.

The scoreboard (per-process liveness and counters), the cluster view and the member ids
read from it, and the per-IP connection counts. Children inherit the mappings; nobody
opens a block by name, and no block's name outlives the ``create`` call (``segment``).
"""
