"""An echo bot in MLS-encrypted groups: added to a group, it joins it and
answers every message with the same text.

usage: echo_bot.py JID PASSWORD [SERVICE]   (its device: echo-bot.sqlite3;
the service is found with XEP-0030 among the server's items if not given)
"""
import asyncio
import sys

import slixmpp

import xmpp_mls.slixmpp  # noqa: F401 (registers the plugin xep_mls)


class EchoBot(slixmpp.ClientXMPP):
    def __init__(self, jid, password, service=None, state="echo-bot.sqlite3"):
        super().__init__(jid, password)
        self.register_plugin("xep_mls", {"state": state, "service": service})
        self.mls = self.plugin["xep_mls"]
        self.add_event_handler("session_start", self.start)
        self.add_event_handler("mls_joined", self.joined)
        self.add_event_handler("mls_message", self.echo)

    async def start(self, _event):
        self.send_presence()
        await self.mls.publish()  # the device and its KeyPackages
        await self.mls.catch_up()  # Welcomes and messages missed while offline
        await self.mls.join_all()  # the live feed of every group

    async def joined(self, _event):
        await self.mls.join_all()  # the feed of the group it was added to

    async def echo(self, message):
        if message["body"] is not None:
            await self.mls.send(message["group"], message["body"])


if __name__ == "__main__":
    bot = EchoBot(*sys.argv[1:4])
    bot.connect()
    asyncio.get_event_loop().run_until_complete(bot.disconnected)
