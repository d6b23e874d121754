//! Integration tests of enclaveid-proxy over real loopback sockets: real rustls, real foreign
//! peers (curl, openssl s_client, nginx, promtool), certificates minted per test. Most tests run
//! the proxy in-process; `cli` spawns the binary for exit codes and signals.

#![allow(
    clippy::unwrap_used,
    clippy::missing_panics_doc,
    unreachable_pub,
    dead_code
)]
#![allow(
    clippy::float_cmp,
    reason = "metric samples compared here are small whole numbers"
)]
#![allow(clippy::too_many_lines, reason = "a test reads best as one story")]

mod cli;
mod demo;
mod foreign;
mod harness;
mod http;
mod lifecycle;
mod rejections;
mod tcp;
