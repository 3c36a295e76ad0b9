//! The account inbox: notices kept until the account's devices have
//! acknowledged them (querying and acknowledgements come with history).

use minidom::Element;
use super::sql::{params, Db};

use super::StoreError;
use crate::protocol::notices::Notice;

/// A notice as stored, with its XEP-0359 stanza id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredNotice {
    pub stanza_id: String,
    pub notice: Notice,
}

/// A random, unguessable stanza id (XEP-0359): 96 bits, base32.
pub fn new_stanza_id() -> String {
    let bytes: [u8; 12] = rand::random();
    crate::protocol::address::group_node(&bytes)
}

/// Appends `payload` to `account`'s inbox inside the caller's transaction;
/// returns its stanza id. The entry's position is taken under the account's
/// lock (`lock_account`), so that an account's positions are committed in
/// the order they are taken, whatever the number of writers: a device that
/// acknowledged position n never has an entry below n appear later.
pub(super) fn insert_inbox(c: &Db, account: &str, payload: &Element, now: i64) -> Result<String, StoreError> {
    super::usage::lock_account(c, account)?;
    let stanza_id = new_stanza_id();
    c.execute(
        "INSERT INTO inbox (account, stanza_id, created_at, payload) VALUES (?1, ?2, ?3, ?4)",
        params![account, stanza_id, now, String::from(payload)],
    )?;
    Ok(stanza_id)
}

pub(super) fn insert_notice(c: &Db, account: &str, notice: Notice, now: i64) -> Result<StoredNotice, StoreError> {
    let stanza_id = insert_inbox(c, account, &notice.to_element(), now)?;
    Ok(StoredNotice { stanza_id, notice })
}

impl super::Store {
    /// How many entries `account`'s inbox holds.
    pub async fn inbox_len(&self, account: String) -> Result<usize, StoreError> {
        self.read(move |c| c.query_row("SELECT count(*) FROM inbox WHERE account = ?1", params![account], |r| r.get(0))).await
    }
}
