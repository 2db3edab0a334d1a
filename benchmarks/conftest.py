"""Shared setup of the benchmarks."""

from __future__ import annotations

import resource

# The 1000-subscriber fan-out holds 2000 socketpair fds (plus uvloop's own); many
# systems default to a soft limit of 1024. Raise it up to the hard limit, no further.
_NEEDED_FDS = 4096
_soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
if _soft != resource.RLIM_INFINITY and _soft < _NEEDED_FDS:
    _target = _NEEDED_FDS if _hard == resource.RLIM_INFINITY else min(_NEEDED_FDS, _hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (_target, _hard))
