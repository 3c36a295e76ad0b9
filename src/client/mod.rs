//! The client library: what a device needs to use an xmpp-mls service.
//! Feature modules carry the same names as in `service/` and `store/`.

mod session;

pub use session::{iq_element, ClientError, ConnectOptions, Session};
