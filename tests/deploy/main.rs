//! The deploy stack, tested statically and against a live gateway: the compose file, the
//! Dockerfile, Prometheus' configuration and alert rules, the Grafana dashboards. Its own test
//! binary: most of it reads files and needs no broker.

mod deploy;
mod kubernetes;
mod prometheus;
#[path = "../e2e/support.rs"]
mod support;
