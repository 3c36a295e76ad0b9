"""The slixmpp plugin ``xep_mls``: MLS groups of an xmpp-mls service on
slixmpp's own stream.

    import xmpp_mls.slixmpp  # registers the plugin
    xmpp.register_plugin("xep_mls", {"state": "bot.sqlite3", "service": "mls.example.org"})
    await xmpp.plugin["xep_mls"].publish()

Config: ``state`` (the device's file: created on the first session, opened
afterwards), ``service`` (the service's JID; found with XEP-0030 among the
server's items when not given) and ``label`` (the device's label, on
creation). The device starts when the session is bound (or, to find the
service, when it starts); the ``mls_ready`` event follows.

Every operation is a coroutine that returns its result or raises the
typed exception (:class:`xmpp_mls.StanzaError` and the other
:class:`xmpp_mls.MlsError` subclasses). What happens in the groups comes as
events whose data is a dict: ``mls_message``, ``mls_discarded``,
``mls_delivered``, ``mls_joined``, ``mls_proposed``, ``mls_epoch`` (and
``mls_member_added`` / ``mls_member_removed`` per device, for each epoch
after the group was joined or after the first epoch that the session saw
in it), ``mls_removal_proposed``, ``mls_unlisted_leaf``, ``mls_removed``,
``mls_history_pruned``, ``mls_fork``, ``mls_refused`` and
``mls_refilled``. The core's stanzas go through slixmpp's send queue.
"""

import asyncio
import os

from slixmpp import JID, Iq, Message, Presence
from slixmpp.exceptions import IqError, IqTimeout
from slixmpp.plugins.base import BasePlugin, register_plugin
from slixmpp.xmlstream import ET, tostring
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher.base import MatcherBase

from . import Client, ClosedError, Device, MlsError

#: The service's feature (XEP-0030).
NS = "urn:xmpp:mls:0"

#: slixmpp's stanza classes, by the name of the core's outgoing stanzas.
STANZAS = {"message": Message, "presence": Presence, "iq": Iq}


class ForCore(MatcherBase):
    """What the core takes: the answers to its own IQs (from the service,
    or from wherever its vault lives, such as the account's PEP), and
    messages and presences whose sender is of the service's domain (IQ
    requests are slixmpp's to answer)."""

    def __init__(self, plugin):
        super().__init__(None)
        self.plugin = plugin

    def match(self, stanza):
        service = self.plugin.service
        if not service or not isinstance(stanza, (Message, Presence, Iq)):
            return False
        if isinstance(stanza, Iq):
            return stanza["type"] in ("result", "error") and stanza["id"] in self.plugin._asked
        return stanza["from"].domain == JID(service).domain


class XEP_MLS(BasePlugin):
    name = "xep_mls"
    description = "MLS group encryption (xmpp-mls)"
    dependencies = {"xep_0030"}
    default_config = {"state": None, "service": None, "label": None}

    def plugin_init(self):
        self.client = None
        self.ready = asyncio.Event()
        self._waiting = {}  # op id -> future of its result
        self._timer = None
        self._asked = set()  # ids of the core's IQ requests not answered yet
        self._members = {}  # group -> {(account, device)}
        self._learning = {}  # op id -> group whose members it reads
        self.xmpp.register_handler(Callback("xep_mls", ForCore(self), self._received))
        self.xmpp.add_event_handler("session_start", self._session_start)
        self.xmpp.add_event_handler("session_end", self._session_end)

    def plugin_end(self):
        self.xmpp.remove_handler("xep_mls")
        self.xmpp.del_event_handler("session_start", self._session_start)
        self.xmpp.del_event_handler("session_end", self._session_end)
        self._session_end(None)

    def session_bind(self, jid):
        if self.service:
            self._start(JID(jid))

    async def _session_start(self, _event):
        if self.client is None:
            self.service = await self.find_service()
            self._start(self.xmpp.boundjid)

    def _start(self, jid):
        if not self.state:
            raise MlsError("xep_mls needs the 'state' config: the device's file")
        if os.path.exists(self.state):
            device = Device.open(self.state, jid.bare)
        else:
            device = Device.create(self.state, jid.bare, self.label)
        self.client = Client(device, jid.full, self.service, self.xmpp.loop.time())
        self.ready.set()
        self._pump()
        self.xmpp.event("mls_ready", {"device": self.client.device_id, "service": self.service})

    def _session_end(self, _event):
        """The stream is gone: the operations under way fail, the device's file closes."""
        self.ready.clear()
        if self.client is not None:
            self.client.close()
            self._settle()
        self.client = None
        self._learning = {}
        waiting, self._waiting = self._waiting, {}
        for future in waiting.values():
            if not future.done():
                future.set_exception(ClosedError("the XMPP stream closed"))

    async def find_service(self):
        """The JID of the first item of the account's server whose
        XEP-0030 features include ``urn:xmpp:mls:0``."""
        disco = self.xmpp.plugin["xep_0030"]
        items = await disco.get_items(jid=self.xmpp.boundjid.domain)
        for jid, _node, _name in items["disco_items"]["items"]:
            try:
                info = await disco.get_info(jid=jid)
            except (IqError, IqTimeout):
                continue  # an item that is down or does not answer disco
            if NS in info["disco_info"]["features"]:
                return str(jid)
        raise MlsError(f"{self.xmpp.boundjid.domain} lists no service with {NS}")

    # The core's inputs and outputs.

    def _received(self, stanza):
        if isinstance(stanza, Iq):
            self._asked.discard(stanza["id"])
        if self.client is not None:
            self.client.receive(tostring(stanza.xml, top_level=True))
            self._pump()

    def _tick(self):
        self._timer = None
        if self.client is not None:
            self.client.tick(self.xmpp.loop.time())
            self._pump()

    def _pump(self):
        """Sends what the core queued, fires its events and settles the
        finished operations (until that starts nothing new), then sets the
        timer for the core's next deadline."""
        while True:
            sent = self.client.transmit()
            for xml in sent:
                self._send(xml)
            if not self._settle() and not sent:
                break
        deadline = self.client.next_deadline()
        if deadline is not None:
            self._timer = self.xmpp.loop.call_at(deadline, self._tick)

    def _send(self, xml):
        """Sends a stanza of the core as a slixmpp stanza, through slixmpp's
        send queue: in order with the application's stanzas, held until the
        session starts, and counted by XEP-0198 stream management."""
        element = ET.fromstring(xml)
        kind = STANZAS[element.tag.rpartition("}")[2]]
        if kind is Iq and element.get("type") in ("get", "set"):
            self._asked.add(element.get("id"))
        self.xmpp.send(kind(self.xmpp, xml=element))

    def _settle(self):
        """Fires the core's events and settles the finished operations;
        whether there were any."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        events, done = self.client.events(), self.client.done()
        for event in events:
            self._fire(event)
        for op, result in done:
            if op in self._learning:
                self._learnt(self._learning.pop(op), result)
                continue
            future = self._waiting.pop(op, None)
            if future is None or future.done():
                continue
            if isinstance(result, MlsError):
                future.set_exception(result)
            else:
                future.set_result(result)
        return bool(events or done)

    def _fire(self, event):
        if event["type"] == "joined":
            self._learning[self.client.members(event["group"])] = event["group"]
        elif event["type"] == "epoch":
            self._member_changes(event)
        self.xmpp.event("mls_" + event["type"], event)

    def _learnt(self, group, members):
        """The members of a group just joined: what its next epoch is compared with."""
        if not isinstance(members, MlsError):
            self._members.setdefault(group, set(members))

    def _member_changes(self, event):
        """mls_member_added and mls_member_removed for each device that
        the epoch added or removed, once the members before it are known."""
        group, now = event["group"], set(event["members"])
        before = self._members.get(group)
        self._members[group] = now
        if before is None:
            return
        for name, devices in (("mls_member_added", now - before), ("mls_member_removed", before - now)):
            for account, device in sorted(devices):
                self.xmpp.event(name, {"group": group, "account": account, "device": device, "epoch": event["epoch"]})

    async def _run(self, operation, *args):
        await self.ready.wait()
        op = getattr(self.client, operation)(*args)
        future = self.xmpp.loop.create_future()
        self._waiting[op] = future
        self._pump()
        return await future

    # Operations.

    async def publish(self):
        """Publishes this device in the account's device list and fills its KeyPackage pool."""
        return await self._run("publish")

    async def create_group(self):
        """A new group with this device in it: its JID."""
        return await self._run("create")

    async def add(self, group, accounts):
        """Adds every device of each account: {"epoch", "stanza_id", "position"}."""
        return await self._run("add", str(group), [str(a) for a in accounts])

    async def remove_account(self, group, account):
        """Removes every device of the account: as :meth:`add`."""
        return await self._run("remove_account", str(group), str(account))

    async def remove_device(self, group, account, device):
        """Removes one device of the account: as :meth:`add`."""
        return await self._run("remove_device", str(group), str(account), device)

    async def update(self, group):
        """Commits an update of this device's keys: as :meth:`add`."""
        return await self._run("update", str(group))

    async def leave(self, group):
        """Leaves the group: as :meth:`add`."""
        return await self._run("leave", str(group))

    async def send(self, group, content):
        """Sends a text, or a list of XML elements (the envelope's
        ``<content/>``): the message's id (its echo comes as ``mls_delivered``)."""
        return await self._run("send", str(group), content)

    async def join_all(self):
        """Joins the live feed of every group of this device."""
        return await self._run("join_all")

    async def catch_up(self):
        """Reads the inbox and every group's archive since the last message
        seen, firing the events of everything missed."""
        return await self._run("catch_up")

    async def resend(self):
        """Sends again the messages neither echoed nor refused: their count."""
        return await self._run("resend")

    async def members(self, group):
        """The group's members as [(account, device id)]."""
        return await self._run("members", str(group))

    async def open_vault(self, passphrase=None):
        """Opens the account's vault with the passphrase, or with this device's
        enrolled key if it is None; the history of this device's groups is kept in it."""
        return await self._run("open_vault", passphrase)

    async def read_history(self, group):
        """The group's history from the vault (after :meth:`open_vault`):
        {"entries": [...], "unreadable": [(stanza_id, epoch, why)]}."""
        return await self._run("read_history", str(group))


#: For ``xmpp.register_plugin("xep_mls", module=xmpp_mls.slixmpp)``.
xep_mls = XEP_MLS
register_plugin(XEP_MLS)
