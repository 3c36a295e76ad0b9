"""Runs the bot of examples/python/echo_bot.py on a private test server
(plain TCP on loopback), the service found with XEP-0030. Prints JSON
lines: {"event": "started", "service": ...} once its start handler is
through, {"event": "joined", "group": ...} once it joined a group's feed.

usage: echo_bot_runner.py JID PASSWORD HOST PORT STATE
"""
import asyncio
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../examples/python"))
from echo_bot import EchoBot  # noqa: E402


class TestBot(EchoBot):
    async def start(self, event):
        await super().start(event)
        print(json.dumps({"event": "started", "service": self.mls.service}), flush=True)

    async def joined(self, event):
        await super().joined(event)
        print(json.dumps({"event": "joined", "group": event["group"]}), flush=True)


jid, password, host, port, state = sys.argv[1:6]
bot = TestBot(jid, password, state=state)
bot.enable_starttls = False
bot.enable_direct_tls = False
bot.enable_plaintext = True
bot.plugin["feature_mechanisms"].unencrypted_scram = True
bot.plugin["feature_mechanisms"].unencrypted_plain = True
bot.connect(host, int(port))
asyncio.get_event_loop().run_until_complete(bot.disconnected)
