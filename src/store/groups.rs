//! Groups followed by the Delivery Service.

use rusqlite::OptionalExtension;

use super::{Store, StoreError};

impl Store {
    /// Whether the DS follows a group with this MLS group_id.
    pub async fn group_exists(&self, group_id: Vec<u8>) -> Result<bool, StoreError> {
        self.read(move |c| {
            Ok(c.query_row("SELECT 1 FROM groups WHERE group_id = ?1", [group_id], |_| Ok(()))
                .optional()?
                .is_some())
        })
        .await
    }
}
