//! xmpp-mls: MLS (RFC 9420) group encryption for any XMPP server, as an
//! external component (XEP-0114). See README.md and xep/.

pub mod client;
pub mod component;
pub mod config;
pub mod fuzz;
pub mod metrics;
pub mod protocol;
pub mod service;
pub mod store;
pub mod xmpp;
