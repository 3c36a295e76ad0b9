"""Pages through an archive with slixmpp's stock XEP-0313 plugin, a client
library that knows nothing of MLS. Prints the number of results, then one
stanza id per line.

usage: slixmpp_mam.py JID PASSWORD HOST PORT ARCHIVE_JID PAGE_SIZE
"""
import asyncio
import sys

import slixmpp

jid, password, host, port, archive, page = sys.argv[1:7]


class Reader(slixmpp.ClientXMPP):
    def __init__(self):
        super().__init__(jid, password)
        # A private test server on loopback, without TLS.
        self.enable_starttls = False
        self.enable_direct_tls = False
        self.enable_plaintext = True
        self["feature_mechanisms"].unencrypted_scram = True
        self["feature_mechanisms"].unencrypted_plain = True
        for plugin in ("xep_0030", "xep_0059", "xep_0313"):
            self.register_plugin(plugin)
        self.ids = []
        self.add_event_handler("session_start", self.start)
        self.add_event_handler("failed_auth", lambda _: self.fail("authentication failed"))

    def fail(self, why):
        print(f"error: {why}", file=sys.stderr)
        self.disconnect()

    async def start(self, _event):
        try:
            async for message in self["xep_0313"].iterate(jid=archive, rsm={"max": int(page)}):
                self.ids.append(message["mam_result"]["id"])
        except Exception as e:  # reported to the Rust test through the exit code
            self.fail(repr(e))
            return
        print(len(self.ids))
        print("\n".join(self.ids))
        self.disconnect()


reader = Reader()
reader.connect(host, int(port))
asyncio.get_event_loop().run_until_complete(reader.disconnected)
sys.exit(0 if reader.ids else 1)
