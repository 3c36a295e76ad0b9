//! A cluster of private ejabberd nodes on this host. Each node is a
//! [`Server`] of its own (directory, ports, Erlang node name), serving the
//! same domains and taking connections for the component on its own
//! component port; every node but the first joins the first one's cluster
//! with `ejabberdctl join_cluster`. All nodes run as the ejabberd user, so
//! they share its Erlang cookie. In a cluster ejabberd routes a stanza for
//! the component to a connection on the sender's own node, if there is one.

use std::time::Instant;

use super::{ejabberd, Kind, Server};

pub struct Cluster {
    pub nodes: Vec<Server>,
}

impl Cluster {
    /// `n` ejabberd nodes, started side by side, then joined into one
    /// cluster, which the first node lists whole. Accounts are to be
    /// registered afterwards: a joining node's own data is replaced by the
    /// cluster's.
    pub fn start(n: usize) -> Self {
        assert_eq!(Kind::chosen(), Kind::Ejabberd, "a cluster is ejabberd's");
        let nodes: Vec<Server> = std::thread::scope(|s| {
            let starting: Vec<_> = (0..n).map(|_| s.spawn(Server::start)).collect();
            starting.into_iter().map(|t| t.join().unwrap()).collect()
        });
        let cluster = Cluster { nodes };
        let first = &cluster.nodes[0];
        for node in &cluster.nodes[1..] {
            join(node, first);
        }
        let (code, listed) = ejabberd::run_ctl(first, &["list_cluster"]);
        let names: Vec<String> = cluster.nodes.iter().map(ejabberd::node).collect();
        let whole = code == Some(0) && names.iter().all(|n| listed.contains(n));
        assert!(whole, "list_cluster ({code:?}) on the first node: {listed}, not all of {names:?}");
        cluster
    }

    /// The nodes, for the functions that spread devices over servers.
    pub fn servers(&self) -> Vec<&Server> {
        self.nodes.iter().collect()
    }
}

/// `node` joins `first`'s cluster: ejabberd on `node` stops, takes a copy
/// of the cluster's database and starts again, before ejabberdctl returns;
/// then waits until `node` listens again.
fn join(node: &Server, first: &Server) {
    let start = Instant::now();
    let (code, out) = ejabberd::run_ctl(node, &["join_cluster", &ejabberd::node(first)]);
    assert_eq!(code, Some(0), "join_cluster {} to {}: {out}", ejabberd::node(node), ejabberd::node(first));
    node.wait_listening();
    eprintln!("{} joined the cluster in {:.1} s", ejabberd::node(node), start.elapsed().as_secs_f64());
}

impl Drop for Cluster {
    /// Each node's log when a test fails; the nodes stop as [`Server`]s do.
    fn drop(&mut self) {
        if std::thread::panicking() {
            for node in &self.nodes {
                eprintln!("--- ejabberd log of {} ---\n{}", ejabberd::node(node), node.log());
            }
        }
    }
}
