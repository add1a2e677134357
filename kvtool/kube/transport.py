"""Recognise failures to reach the API server (refused, TLS, timeout, DNS) and say what went wrong.

The `kubernetes` client lets urllib3's exceptions through unwrapped; a user
needs one sentence naming the cause, not a MaxRetryError traceback. The CLI
(kvtool.cli.main) adds the server and the kubeconfig to this reason.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator

from urllib3 import exceptions as u3


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """The exception, what urllib3 says caused it (MaxRetryError.reason) and the Python cause chain."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo += [getattr(e, "reason", None) if isinstance(getattr(e, "reason", None), BaseException) else None,
                 e.__cause__, e.__context__, *(a for a in e.args if isinstance(a, BaseException))]


def is_transport_error(exc: BaseException) -> bool:
    """True for failures of the connection itself, not for answers the server gave.

    Only urllib3's errors count: the client wraps every socket, TLS and timeout failure in one, while
    a bare ConnectionRefusedError may come from elsewhere (a launcher's unix socket, say)."""
    return isinstance(exc, u3.HTTPError)


def _tls_detail(exc: BaseException) -> str:
    """"self-signed certificate", "wrong version number": what the ssl module says, not its repr."""
    chain = list(_chain(exc))
    for e in chain:
        if isinstance(e, ssl.SSLCertVerificationError) and e.verify_message:
            return e.verify_message
    for e in chain:
        if isinstance(e, ssl.SSLError) and e.reason:
            return str(e.reason).lower().replace("_", " ")
    return str(exc)


def reason(exc: BaseException) -> str | None:
    """What went wrong, in a few words ("connection refused"), or None when `exc` is no transport error."""
    if not is_transport_error(exc):
        return None
    chain = list(_chain(exc))
    for e in chain:
        if isinstance(e, u3.NameResolutionError | socket.gaierror):
            host = getattr(getattr(e, "conn", None), "host", None)
            return f"cannot resolve the host name{f' {host!r}' if host else ''} (DNS)"
    if any(isinstance(e, u3.SSLError | ssl.SSLError) for e in chain):
        return f"TLS failure: {_tls_detail(exc)}"
    if any(isinstance(e, ConnectionRefusedError) for e in chain):
        return "connection refused (is the API server running?)"
    for e in chain:
        # urllib3's NewConnectionError is a ConnectTimeoutError too, for history's sake: not a timeout.
        if isinstance(e, u3.ConnectTimeoutError) and not isinstance(e, u3.NewConnectionError):
            return "timed out connecting"
        if isinstance(e, u3.ReadTimeoutError | TimeoutError):
            return "timed out waiting for an answer"
        if isinstance(e, ConnectionResetError):
            return "the connection was reset"
    for e in chain:
        if isinstance(e, u3.ProtocolError):
            return f"the connection broke ({e.args[0] if e.args else e})"
        if isinstance(e, u3.NewConnectionError):
            return f"cannot connect ({e})"
    return str(chain[-1]) or type(chain[-1]).__name__


def server_of(exc: BaseException) -> str | None:
    """The server a urllib3 error was about (scheme://host:port), when it says."""
    for e in _chain(exc):
        pool = getattr(e, "pool", None)
        if pool is not None and getattr(pool, "host", None):
            return f"{pool.scheme}://{pool.host}:{pool.port}"
    return None
