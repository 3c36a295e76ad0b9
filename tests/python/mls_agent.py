"""A slixmpp client with the xep_mls plugin, driven by tests/python_plugin.rs.

usage: mls_agent.py JID PASSWORD HOST PORT STATE SERVICE

Reads one JSON command a line on stdin, {"op": NAME, "args": [...]}, awaits
the plugin's coroutine NAME(*args) and prints {"op": NAME, "result": ...}
or {"op": NAME, "error": CLASS, "condition": ..., "app_condition": ...,
"text": ...}; prints every mls_* event as {"event": NAME, ...its data}.
"quit" (or the end of stdin) disconnects; the exit code is 0 after a clean
disconnect.
"""
import asyncio
import json
import logging
import sys

import slixmpp

import xmpp_mls.slixmpp  # noqa: F401 (registers xep_mls)
from xmpp_mls import MlsError

# Warnings and errors on stderr, which the test reads: slixmpp logs an
# error (of a handler, of stream management's counts) and goes on.
logging.basicConfig(level=logging.WARNING, format="%(levelname)s:%(name)s:%(message)s")

EVENTS = ("ready", "message", "discarded", "delivered", "joined", "proposed", "epoch",
          "member_added", "member_removed", "removed", "fork", "refused", "refilled")


def emit(line):
    print(json.dumps(line), flush=True)


class Agent(slixmpp.ClientXMPP):
    def __init__(self, jid, password, state, service):
        super().__init__(jid, password)
        # A private test server on loopback, without TLS.
        self.enable_starttls = False
        self.enable_direct_tls = False
        self.enable_plaintext = True
        self.plugin["feature_mechanisms"].unencrypted_scram = True
        self.plugin["feature_mechanisms"].unencrypted_plain = True
        # Stream management counts stanzas: the plugin's must go through
        # slixmpp's send queue for the counts to agree with the server's.
        self.register_plugin("xep_0198")
        self.add_event_handler("sm_enabled", lambda _: logging.warning("stream management enabled"))
        self.register_plugin("xep_mls", {"state": state, "service": service})
        for name in EVENTS:
            self.add_event_handler("mls_" + name, lambda data, name=name: emit({"event": name, **data}))
        self.add_event_handler("session_start", self.start)
        self.add_event_handler("failed_auth", lambda _: self.stop("authentication failed"))
        self.clean = False

    def stop(self, why):
        print(f"error: {why}", file=sys.stderr)
        self.disconnect()

    async def start(self, _event):
        self.send_presence()
        # Held here: the pipe's protocol holds its reader weakly, and the
        # loop holds this task weakly, so that otherwise the garbage
        # collector may take both while the task waits for a line.
        self.commands = asyncio.StreamReader()
        protocol = asyncio.StreamReaderProtocol(self.commands)
        await asyncio.get_running_loop().connect_read_pipe(lambda: protocol, sys.stdin)
        while line := await self.commands.readline():
            command = json.loads(line)
            if command["op"] == "quit":
                break
            emit(await self.run(command["op"], command.get("args", [])))
        self.clean = True
        self.disconnect()

    async def run(self, op, args):
        try:
            return {"op": op, "result": await getattr(self.plugin["xep_mls"], op)(*args)}
        except MlsError as e:
            fields = {name: getattr(e, name, None) for name in ("condition", "app_condition")}
            return {"op": op, "error": type(e).__name__, "text": str(e), **fields}


jid, password, host, port, state, service = sys.argv[1:7]
agent = Agent(jid, password, state, service)
agent.connect(host, int(port))
asyncio.get_event_loop().run_until_complete(agent.disconnected)
sys.exit(0 if agent.clean else 1)
