"""MLS (RFC 9420) group encryption over XMPP: the client core of xmpp-mls.

The core does no I/O: give a :class:`Client` every stanza from the service's
domain (:meth:`Client.receive`), send what :meth:`Client.transmit` returns,
call :meth:`Client.tick` at :meth:`Client.next_deadline`, and read
:meth:`Client.events` and :meth:`Client.done`. ``xmpp_mls.slixmpp`` is a
slixmpp plugin that does all of that on slixmpp's own stream.
"""

from ._core import (
    Client,
    ClosedError,
    Device,
    ForkedError,
    MlsError,
    StanzaError,
    TimeoutError,
    UnknownGroupError,
)

__all__ = [
    "Client",
    "ClosedError",
    "Device",
    "ForkedError",
    "MlsError",
    "StanzaError",
    "TimeoutError",
    "UnknownGroupError",
]
