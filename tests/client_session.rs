//! The client library's transport under contention: a flood of incoming
//! messages while IQs are in flight (tokio-xmpp 6's `Client` froze here).

mod common;

use std::time::Duration;

use common::{Component, Prosody, COMPONENT};
use minidom::Element;
use xmpp_parsers::jid::Jid;
use xmpp_parsers::ns;

const FLOOD: usize = 2000;
const IQS: usize = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iqs_complete_during_an_incoming_flood_and_nothing_is_lost() {
    let prosody = Prosody::start();
    let _component = Component::start(&prosody, "");
    let alice = prosody.client("alice", "laptop").await;
    let bob = prosody.client("bob", "phone").await;
    let to = alice.jid().to_string();

    let flood = tokio::spawn(async move {
        for n in 0..FLOOD {
            let msg = Element::builder("message", "jabber:client")
                .attr("to".try_into().unwrap(), to.as_str())
                .attr("type".try_into().unwrap(), "chat")
                .attr("id".try_into().unwrap(), format!("f{n}"))
                .append(Element::builder("body", "jabber:client").append(format!("{n}")).build())
                .build();
            bob.send(msg).await.unwrap();
        }
        bob
    });

    // Alice's IQs contend with the flood on her stream; none may stall.
    let service = Jid::new(COMPONENT).unwrap();
    for _ in 0..IQS {
        let query = Element::builder("query", ns::DISCO_INFO).build();
        let info = alice.iq(&service, "get", query).await.expect("IQ answered during the flood");
        assert!(info.is_some());
    }
    let bob = flood.await.unwrap();

    let mut seen = vec![false; FLOOD];
    let mut received = 0;
    while received < FLOOD {
        let Some(ev) = alice.next_event_within(Duration::from_secs(20)).await else { break };
        if ev.name() != "message" {
            continue;
        }
        let n: usize = ev.get_child("body", "jabber:client").unwrap().text().parse().unwrap();
        assert!(!seen[n], "message {n} twice");
        seen[n] = true;
        received += 1;
    }
    assert_eq!(received, FLOOD, "messages lost");
    bob.close().await;
    alice.close().await;
}
