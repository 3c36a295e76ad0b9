//! XML stream plumbing shared by the component and the client library.

pub mod bounded;
pub mod header;
pub mod link;
pub mod namespace;
pub mod rewrite;
pub mod tokens;

pub use link::{Link, LinkError, StanzaNs};
