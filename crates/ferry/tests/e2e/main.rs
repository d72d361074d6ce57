//! ferry's end-to-end tests, one binary: each module starts real servers on free loopback
//! ports and runs the real `ferry` binary against them (`common::Ferry`). One binary links
//! once, where one per file linked two dozen times.

mod common;

mod bigkeys;
mod check;
mod cluster_target;
mod cross_version;
mod cutover;
mod evictions;
mod exclusive;
mod failed_commands;
mod filters;
mod hostile_data;
mod hostile_net;
mod outcomes;
mod ownership;
mod packaging;
mod replicated;
mod resume;
mod serve;
mod sources;
mod sync;
mod tls;
mod topology;
mod valkey_field_ttl;
mod verify;
mod verify_cluster;
mod workers;
