//! The one integration test binary (one link on 2 cores). Every test starts the real `mandate`
//! binary on port 0 with a real sled store in a temp dir and real downstream processes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

mod admin;
mod agents;
mod approvals;
mod audit;
mod broker;
mod config_files;
mod exchange;
mod handoff;
mod identity;
mod interop;
mod isolation;
mod native;
mod ops;
mod policy;
mod security;
