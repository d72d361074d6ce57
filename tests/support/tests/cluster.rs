//! The cluster helper itself: start, routed commands, resharding, failover.

use std::time::Duration;

use ferry_testkit::{assert_same_data_cluster, Cluster, Server};

#[test]
fn cluster_starts_routes_reshards_and_fails_over() {
    let cluster = Cluster::start(3, 1);
    assert_eq!(cluster.masters().len(), 3);
    assert_eq!(cluster.replicas().len(), 3);
    for i in 0..100 {
        cluster.cmd_routed_str(&["SET", &format!("k{i}"), &i.to_string()]);
    }
    assert!(cluster.keys_per_master().iter().all(|&n| n > 10));
    let slot = cluster.keyslot(b"k1");
    let from = cluster.index_of_port(owner_port(&cluster, slot)).unwrap();
    let to = (0..3).find(|&m| m != from).unwrap();
    cluster.migrate_slot(slot, from, to, Duration::ZERO);
    cluster.wait_stable();
    assert_eq!(owner_port(&cluster, slot), cluster.node(to).port());
    assert_eq!(cluster.cmd_routed_str(&["GET", "k1"]).as_str(), "1");
    let new = cluster.failover(to);
    assert_eq!(owner_port(&cluster, slot), cluster.node(new).port());
    assert_eq!(cluster.cmd_routed_str(&["GET", "k1"]).as_str(), "1");

    let standalone = Server::start();
    for i in 0..100 {
        standalone.cmd(&["SET", &format!("k{i}"), &i.to_string()]);
    }
    assert_same_data_cluster(&standalone, &cluster);
}

fn owner_port(cluster: &Cluster, slot: u16) -> u16 {
    let slots = cluster.node(0).cmd(&["CLUSTER", "SLOTS"]).as_array();
    for r in slots {
        let r = r.as_array();
        if r[0].as_int() <= slot as i64 && slot as i64 <= r[1].as_int() {
            return r[2].as_array()[1].as_int() as u16;
        }
    }
    panic!("slot {slot} unassigned");
}
