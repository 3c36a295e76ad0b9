"""The package without a server, as tests/python_plugin.rs runs it in a
fresh virtualenv: a device file, the core's first stanzas, a stanza error
(received without the stream's namespace, as slixmpp's str() writes it)
and a timeout, each printed as one line."""
import os
import re
import sys
import tempfile

import xmpp_mls

assert xmpp_mls.__file__.startswith(sys.prefix), xmpp_mls.__file__
print([c.__name__ for c in xmpp_mls.StanzaError.__mro__[:3]])

path = os.path.join(tempfile.mkdtemp(), "device.sqlite3")
device = xmpp_mls.Device.create(path, "alice@example.org")
print(device.account, oct(os.stat(path).st_mode & 0o777))
try:
    xmpp_mls.Device.open(path, "bob@example.org")
except xmpp_mls.MlsError as e:
    print(type(e).__name__, e)

client = xmpp_mls.Client(device, "alice@example.org/laptop", "mls.example.org", now=100.0)
print(client.transmit(), client.next_deadline())
op = client.create()
# A new group lists the service's external sender: the core reads the
# service's disco#info first (this one advertises none).
(disco,) = client.transmit()
disco_id = re.search("id='([^']*)'", disco).group(1)
client.receive(
    f"<iq type='result' id='{disco_id}' from='mls.example.org'"
    " to='alice@example.org/laptop'><query xmlns='http://jabber.org/protocol/disco#info'>"
    "<identity category='conference' type='mls'/><feature var='urn:xmpp:mls:0'/>"
    "<x xmlns='jabber:x:data' type='result'><field var='FORM_TYPE' type='hidden'>"
    "<value>urn:xmpp:mls:0</value></field></x></query></iq>"
)
(iq,) = client.transmit()
to, id_ = re.search("to='([^']*)'", iq).group(1), re.search("id='([^']*)'", iq).group(1)
print(op, to.endswith("@mls.example.org"), "<create xmlns='urn:xmpp:mls:0'>" in iq, client.next_deadline())
client.receive(
    f"<iq type='error' id='{id_}' from='{to}' to='alice@example.org/laptop'><error type='auth'>"
    "<forbidden xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/><not-member xmlns='urn:xmpp:mls:0:errors'/>"
    "<text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'>no</text></error></iq>"
)
((got, error),) = client.done()
print(got == op, type(error).__name__, error, error.type, error.condition, error.app_condition, error.text)
print(client.done(), client.members("nope@mls.example.org"), client.done())
op = client.publish()
client.transmit()
client.tick(129.9)
print(client.done(), client.next_deadline())
client.tick(130.0)
((got, error),) = client.done()
print(got == op, type(error).__name__, error, client.next_deadline())
