//! A client device's SQLite file: openmls' own tables (through
//! openmls_sqlite_storage) and the device's records beside them — who the
//! device is, and its current last-resort KeyPackage.

use std::ffi::OsString;
use std::fs::{OpenOptions, Permissions};
use std::io::ErrorKind;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OptionalExtension};
use rusqlite_migration::{Migrations, M};

use super::StoreError;
pub use super::mls::{open_mls_storage, MlsStorage};

const MIGRATIONS: &[M<'static>] = &[
    M::up(
    "CREATE TABLE device (
        one           INTEGER PRIMARY KEY CHECK (one = 1),
        account       TEXT NOT NULL,
        device_id     TEXT NOT NULL,
        signature_key BLOB NOT NULL,
        label         TEXT,
        created_at    INTEGER NOT NULL
    ) STRICT;
    CREATE TABLE last_resort (
        one        INTEGER PRIMARY KEY CHECK (one = 1),
        kp_ref     TEXT NOT NULL,
        created_at INTEGER NOT NULL
    ) STRICT;",
    ),
    // 2: the groups this device is in (their state is in openmls' tables).
    M::up("CREATE TABLE groups (group_id BLOB PRIMARY KEY, jid TEXT NOT NULL) STRICT;"),
    // 3: the last archive item applied per group (catch-up resumes after it).
    M::up("ALTER TABLE groups ADD COLUMN last_seen TEXT;"),
    // 4: own messages sent and not echoed yet, in sending order (rowid),
    // resent after a reconnect (xep/ §Resends).
    M::up("CREATE TABLE outbox (id TEXT PRIMARY KEY, stanza TEXT NOT NULL) STRICT;"),
    // 5: the archive position of that last item: a later copy that is not
    // the next position shows a gap (xep/ §Delivery to the Feed).
    M::up("ALTER TABLE groups ADD COLUMN last_position INTEGER;"),
    // 6: a group whose epoch check differed from a committer's: nothing is
    // sent into it any more, also after a restart.
    M::up("ALTER TABLE groups ADD COLUMN forked INTEGER NOT NULL DEFAULT 0;"),
    // 7: the highest version of the vault's `keys` record this device has
    // opened, and the highest current data key ID (a rollback shows below).
    M::up(
        "CREATE TABLE vault_keys (
            one     INTEGER PRIMARY KEY CHECK (one = 1),
            version INTEGER NOT NULL,
            key_id  INTEGER NOT NULL
        ) STRICT;",
    ),
    // 8: where that record was (xep/ §Where the Vault Lives): versions
    // count per place, so a move starts the version mark anew.
    M::up("ALTER TABLE vault_keys ADD COLUMN location TEXT NOT NULL DEFAULT '';"),
    // 9: the device's X25519 key pair for the vault (xep/ §Enrolling a
    // Device): an enrolled device opens the vault with it.
    M::up(
        "CREATE TABLE vault_device_key (
            one     INTEGER PRIMARY KEY CHECK (one = 1),
            public  BLOB NOT NULL,
            private BLOB NOT NULL
        ) STRICT;",
    ),
];

/// The newest key record a device opened: where, its version there, and
/// its current data key ID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VaultMark {
    pub location: String,
    pub version: u64,
    pub key_id: u32,
}

/// The last archive item a device applied in a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastSeen {
    pub stanza_id: String,
    /// Its position in the archive; unknown in state from before positions.
    pub position: Option<u64>,
}

/// Who a device is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRecord {
    pub account: String,
    pub device_id: String,
    pub signature_key: Vec<u8>,
    pub label: Option<String>,
}

/// Creates `dir` and its missing parents, each readable by its owner only
/// (0700, whatever the umask); an existing directory is left as it is.
pub fn private_dir(dir: &Path) -> std::io::Result<()> {
    if dir.as_os_str().is_empty() || dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        private_dir(parent)?;
    }
    match std::fs::create_dir(dir) {
        Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(()),
        other => other,
    }?;
    std::fs::set_permissions(dir, Permissions::from_mode(0o700))
}

/// The files of the SQLite database `path`: itself and its journals.
fn database_files(path: &Path) -> [PathBuf; 4] {
    let with = |suffix: &str| {
        let mut name = OsString::from(path.as_os_str());
        name.push(suffix);
        PathBuf::from(name)
    };
    [path.to_owned(), with("-wal"), with("-shm"), with("-journal")]
}

/// Makes the file `path` (created if missing, in a [`private_dir`]) and the
/// journals beside it readable by their owner only (0600, whatever the
/// umask): a device's files hold its private keys. SQLite creates a
/// database's -wal, -shm and -journal files later with the database file's
/// mode, so they are private too.
pub fn private_file(path: &Path) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        private_dir(dir)?;
    }
    OpenOptions::new().write(true).create(true).truncate(false).mode(0o600).open(path)?;
    for file in database_files(path) {
        match std::fs::set_permissions(&file, Permissions::from_mode(0o600)) {
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            other => other?,
        }
    }
    Ok(())
}

/// Writes `bytes` to `path`, made a [`private_file`] first.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    private_file(path)?;
    std::fs::write(path, bytes)
}

pub struct LocalStore {
    conn: Connection,
}

impl LocalStore {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        private_file(path)?;
        let mut conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        Migrations::from_slice(MIGRATIONS).to_latest(&mut conn)?;
        Ok(Self { conn })
    }

    pub fn device(&self) -> Result<Option<DeviceRecord>, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT account, device_id, signature_key, label FROM device", [], |r| {
                Ok(DeviceRecord { account: r.get(0)?, device_id: r.get(1)?, signature_key: r.get(2)?, label: r.get(3)? })
            })
            .optional()?)
    }

    pub fn save_device(&self, d: &DeviceRecord, now: i64) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO device (one, account, device_id, signature_key, label, created_at)
             VALUES (1, ?1, ?2, ?3, ?4, ?5)",
            params![d.account, d.device_id, d.signature_key, d.label, now],
        )?;
        Ok(())
    }

    /// Remembers a group this device is in.
    pub fn add_group(&self, group_id: &[u8], jid: &str) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT OR REPLACE INTO groups (group_id, jid) VALUES (?1, ?2)",
            params![group_id, jid],
        )?;
        Ok(())
    }

    pub fn set_last_seen(&self, group_id: &[u8], seen: &LastSeen) -> Result<(), StoreError> {
        self.conn.execute(
            "UPDATE groups SET last_seen = ?2, last_position = ?3 WHERE group_id = ?1",
            params![group_id, seen.stanza_id, seen.position.map(|p| p as i64)],
        )?;
        Ok(())
    }

    pub fn last_seen(&self, group_id: &[u8]) -> Result<Option<LastSeen>, StoreError> {
        let row = self
            .conn
            .query_row("SELECT last_seen, last_position FROM groups WHERE group_id = ?1", [group_id], |r| {
                let position = r.get::<_, Option<i64>>(1)?.map(|p| p as u64);
                Ok(r.get::<_, Option<String>>(0)?.map(|stanza_id| LastSeen { stanza_id, position }))
            })
            .optional()?;
        Ok(row.flatten())
    }

    pub fn mark_forked(&self, group_id: &[u8]) -> Result<(), StoreError> {
        self.conn.execute("UPDATE groups SET forked = 1 WHERE group_id = ?1", [group_id])?;
        Ok(())
    }

    pub fn is_forked(&self, group_id: &[u8]) -> Result<bool, StoreError> {
        let forked = self
            .conn
            .query_row("SELECT forked FROM groups WHERE group_id = ?1", [group_id], |r| r.get::<_, i64>(0))
            .optional()?;
        Ok(forked == Some(1))
    }

    pub fn forget_group(&self, group_id: &[u8]) -> Result<(), StoreError> {
        self.conn.execute("DELETE FROM groups WHERE group_id = ?1", [group_id])?;
        Ok(())
    }

    /// Keeps a sent message (serialised) until it is echoed.
    pub fn add_unechoed(&self, id: &str, stanza: &str) -> Result<(), StoreError> {
        self.conn.execute("INSERT OR REPLACE INTO outbox (id, stanza) VALUES (?1, ?2)", params![id, stanza])?;
        Ok(())
    }

    pub fn remove_unechoed(&self, id: &str) -> Result<(), StoreError> {
        self.conn.execute("DELETE FROM outbox WHERE id = ?1", [id])?;
        Ok(())
    }

    /// The messages not echoed yet, as (id, stanza), in sending order.
    pub fn unechoed(&self) -> Result<Vec<(String, String)>, StoreError> {
        let mut st = self.conn.prepare("SELECT id, stanza FROM outbox ORDER BY rowid")?;
        let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The JIDs of the groups this device is in.
    pub fn groups(&self) -> Result<Vec<String>, StoreError> {
        let mut st = self.conn.prepare("SELECT jid FROM groups ORDER BY jid")?;
        let rows = st.query_map([], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// A consistent copy of the whole device file (openmls' tables
    /// included), for a backup.
    pub fn snapshot(&self, scratch: &Path) -> Result<Vec<u8>, StoreError> {
        let _ = std::fs::remove_file(scratch);
        private_file(scratch)?; // empty: VACUUM INTO fills it, keeping its mode
        self.conn.execute("VACUUM INTO ?1", [scratch.to_string_lossy()])?;
        let bytes = std::fs::read(scratch)?;
        std::fs::remove_file(scratch)?;
        Ok(bytes)
    }

    /// The rows of one group in openmls' table of group data, as
    /// (provider version, data type, data); `group_key` is the group id as
    /// openmls' storage encodes it.
    pub fn group_rows(&self, group_key: &[u8]) -> Result<Vec<(u16, String, Vec<u8>)>, StoreError> {
        let mut st = self.conn.prepare(
            "SELECT provider_version, data_type, group_data FROM openmls_group_data WHERE group_id = ?1",
        )?;
        let rows = st.query_map([group_key], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The current last-resort package's reference and creation time.
    pub fn last_resort(&self) -> Result<Option<(String, i64)>, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT kp_ref, created_at FROM last_resort", [], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?)
    }

    /// The highest vault `keys` record opened: (version, current key ID).
    pub fn vault_high_water(&self) -> Result<Option<VaultMark>, StoreError> {
        let sql = "SELECT location, version, key_id FROM vault_keys";
        let mark = |r: &rusqlite::Row| Ok(VaultMark { location: r.get(0)?, version: r.get(1)?, key_id: r.get(2)? });
        Ok(self.conn.query_row(sql, [], mark).optional()?)
    }

    /// Raises the high-water mark: the key ID never goes down, nor the
    /// version at one location; at another location the version starts anew.
    pub fn raise_vault_high_water(&self, mark: &VaultMark) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO vault_keys (one, location, version, key_id) VALUES (1, ?1, ?2, ?3)
             ON CONFLICT (one) DO UPDATE SET
               version = CASE WHEN location = excluded.location THEN max(version, excluded.version) ELSE excluded.version END,
               key_id = max(key_id, excluded.key_id),
               location = excluded.location",
            params![mark.location, mark.version, mark.key_id],
        )?;
        Ok(())
    }

    /// The device's vault key pair (public, private), if it made one.
    pub fn vault_device_key(&self) -> Result<Option<(Vec<u8>, Vec<u8>)>, StoreError> {
        let sql = "SELECT public, private FROM vault_device_key";
        Ok(self.conn.query_row(sql, [], |r| Ok((r.get(0)?, r.get(1)?))).optional()?)
    }

    /// Keeps the device's vault key pair, unless it has one: returns the one kept.
    pub fn keep_vault_device_key(&self, public: &[u8], private: &[u8]) -> Result<(Vec<u8>, Vec<u8>), StoreError> {
        self.conn.execute(
            "INSERT INTO vault_device_key (one, public, private) VALUES (1, ?1, ?2) ON CONFLICT (one) DO NOTHING",
            params![public, private],
        )?;
        Ok(self.vault_device_key()?.expect("kept above"))
    }

    pub fn set_last_resort(&self, kp_ref: &str, now: i64) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO last_resort (one, kp_ref, created_at) VALUES (1, ?1, ?2)
             ON CONFLICT (one) DO UPDATE SET kp_ref = excluded.kp_ref, created_at = excluded.created_at",
            params![kp_ref, now],
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_and_last_resort_persist() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.sqlite3");
        let rec = DeviceRecord {
            account: "alice@example.org".into(),
            device_id: "abc".into(),
            signature_key: vec![1; 32],
            label: None,
        };
        {
            let s = LocalStore::open(&path).unwrap();
            assert_eq!(s.device().unwrap(), None);
            s.save_device(&rec, 5).unwrap();
            assert!(s.save_device(&rec, 5).is_err(), "one device per file");
            s.set_last_resort("r1", 6).unwrap();
            s.set_last_resort("r2", 7).unwrap();
        }
        let s = LocalStore::open(&path).unwrap();
        assert_eq!(s.device().unwrap(), Some(rec));
        assert_eq!(s.last_resort().unwrap(), Some(("r2".into(), 7)));
    }
}
