//! The component on a two-node ejabberd cluster: one instance connected to
//! each node, both on one PostgreSQL store. ejabberd hands a stanza for the
//! component to the instance on the sender's own node, so a group whose
//! members are connected to both nodes is served by both instances at once;
//! the store decides every race once.

mod common;

use std::time::Duration;

use common::cluster::Cluster;
use common::{one_group_over, race_claims, race_commits_over, several_instances_possible, Component};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_node_ejabberd_cluster_one_instance_per_node() {
    if !several_instances_possible() {
        return;
    }
    let cluster = Cluster::start(2);
    let nodes = cluster.servers();
    let on_a = Component::start(nodes[0], "");
    let on_b = on_a.another_on(nodes[1]);
    assert!(on_b.wait_log("component connected", 1, Duration::from_secs(15)), "{}", on_b.log());

    // Devices on both nodes race commits in one group: each instance
    // decides the commits of the devices on its own node.
    let dir = tempfile::tempdir().unwrap();
    let (mut devices, group) = one_group_over(&nodes, &dir, 6).await;
    race_commits_over(&[&on_a, &on_b], &mut devices, &group, 12).await;

    // Claimers on both nodes claim one account's KeyPackages at once.
    race_claims(&nodes, 30).await;
}
