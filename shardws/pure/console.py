"""The operator console's decisions, with no I/O: who is signed in, and what a second of
scoreboard counters says (rates, latency quantiles).

Sign-in (``server.console`` does the HTTP):

* The API key is posted once; the answer sets a session cookie (HttpOnly,
  SameSite=Strict) holding a random session id, and gives the page a CSRF token. Neither
  is the key, and the key is never sent back.
* A session lasts ``ttl`` seconds from sign-in, then is refused as expired; signing out
  forgets it at once. At most ``MAX_SESSIONS`` live: a new sign-in past that forgets the
  oldest, so repeated sign-ins cannot grow memory.
* An action (any method but GET and HEAD) made with the cookie must carry the session's
  CSRF token in a header. The cookie alone is ambient (a browser attaches it to a forged
  request from another page of this origin); the token is only in the page's memory.
  Requests with the API key header need no token: the key is not ambient.

Tokens are made by the caller's ``token`` function (``secrets.token_urlsafe``), compared
in constant time.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from shardws.pure.auth import constant_time_equal

#: Sessions kept at most; the oldest is forgotten first.
MAX_SESSIONS = 64
#: Methods that only read: no CSRF token needed.
SAFE_METHODS = frozenset({"GET", "HEAD"})


@dataclass(frozen=True, slots=True)
class Session:
    id: str
    csrf: str
    expires: float  # on the caller's clock


class Refused(Exception):
    """A request the console's sign-in does not let through: ``status`` (401 or 403) and
    a message saying what to do."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Sessions:
    """The console's signed-in sessions of this admin process (not shared: a restarted
    admin forgets them, and the page asks for the key again)."""

    def __init__(self, ttl: float, token: Callable[[], str]) -> None:
        self._ttl = ttl
        self._token = token
        self._sessions: dict[str, Session] = {}  # in sign-in order

    def __len__(self) -> int:
        return len(self._sessions)

    def sign_in(self, now: float) -> Session:
        """A new session (the key was checked by the caller)."""
        self._forget_expired(now)
        while len(self._sessions) >= MAX_SESSIONS:
            del self._sessions[next(iter(self._sessions))]
        session = Session(self._token(), self._token(), now + self._ttl)
        self._sessions[session.id] = session
        return session

    def sign_out(self, session_id: str) -> None:
        self._sessions.pop(session_id, None)

    def check(self, session_id: str, method: str, csrf: str, now: float) -> Session:
        """The session of a request carrying cookie ``session_id``, checking the CSRF
        token ``csrf`` unless ``method`` only reads. Raises :class:`Refused`."""
        session = self._sessions.get(session_id) if session_id else None
        if session is None:
            raise Refused(401, "missing X-API-Key and not signed in to the console (/console)")
        if now >= session.expires:
            del self._sessions[session_id]
            raise Refused(401, "the console session expired: sign in again")
        if method not in SAFE_METHODS and not constant_time_equal(csrf, session.csrf):
            raise Refused(403, "missing or wrong X-CSRF-Token for this console session")
        return session

    def _forget_expired(self, now: float) -> None:
        for session_id in [s.id for s in self._sessions.values() if now >= s.expires]:
            del self._sessions[session_id]


def quantile(counts: Sequence[int], bounds: Sequence[float], q: float) -> float | None:
    """The ``q`` quantile (0 < q < 1) of a histogram's non-cumulative bucket ``counts``
    (upper ``bounds`` of each but the last, which is +Inf), interpolated linearly in its
    bucket as Prometheus's ``histogram_quantile`` does; None when nothing was observed.
    A quantile in the +Inf bucket is reported as the last finite bound."""
    total = sum(counts)
    if total <= 0:
        return None
    rank = q * total
    seen = 0
    for index, count in enumerate(counts):
        if count > 0 and seen + count >= rank:
            if index >= len(bounds):
                return bounds[-1]
            lower = bounds[index - 1] if index > 0 else 0.0
            return lower + (bounds[index] - lower) * (rank - seen) / count
        seen += count
    return bounds[-1]


def per_second(now: int, before: int, seconds: float) -> float:
    """The rate of a counter that went from ``before`` to ``now`` in ``seconds``; 0 when
    it went back (its process restarted and counts from 0 again)."""
    if seconds <= 0 or now < before:
        return 0.0
    return (now - before) / seconds
