//! Versioned schema migrations (SQLite `user_version`). Append, never edit.

use rusqlite::{params, Connection, Transaction};
use rusqlite_migration::{HookResult, Migrations, M};

use super::groups::{resend_key, DAY};
use super::StoreError;
use crate::protocol::groups::Kind;

const MIGRATIONS: &[M<'static>] = &[
    // 1: groups the Delivery Service follows, keyed by MLS group_id.
    M::up(
        "CREATE TABLE groups (
            group_id   BLOB PRIMARY KEY,
            created_at INTEGER NOT NULL
        ) STRICT;",
    ),
    // 2: the account directory (device lists, KeyPackages, subscriptions)
    // and the account inbox.
    M::up(
        "CREATE TABLE devices (
            account       TEXT NOT NULL,
            device_id     TEXT NOT NULL,
            signature_key BLOB NOT NULL,
            label         TEXT,
            expires_at    INTEGER NOT NULL,
            published_at  INTEGER NOT NULL,
            PRIMARY KEY (account, device_id)
        ) STRICT;
        CREATE UNIQUE INDEX devices_by_key ON devices (account, signature_key);
        CREATE TABLE key_packages (
            kp_ref       BLOB PRIMARY KEY,
            account      TEXT NOT NULL,
            device_id    TEXT NOT NULL,
            cipher_suite INTEGER NOT NULL,
            last_resort  INTEGER NOT NULL,
            not_after    INTEGER NOT NULL,
            message      BLOB NOT NULL,
            seq          INTEGER NOT NULL,
            FOREIGN KEY (account, device_id) REFERENCES devices ON DELETE CASCADE
        ) STRICT;
        CREATE INDEX key_packages_pool
            ON key_packages (account, device_id, last_resort, cipher_suite, seq);
        CREATE UNIQUE INDEX key_packages_one_last_resort
            ON key_packages (account, device_id) WHERE last_resort = 1;
        CREATE TABLE subscriptions (
            account    TEXT NOT NULL,
            node       TEXT NOT NULL,
            subscriber TEXT NOT NULL,
            PRIMARY KEY (account, node, subscriber)
        ) STRICT;
        CREATE TABLE inbox (
            seq        INTEGER PRIMARY KEY AUTOINCREMENT,
            account    TEXT NOT NULL,
            stanza_id  TEXT NOT NULL UNIQUE,
            created_at INTEGER NOT NULL,
            payload    TEXT NOT NULL
        ) STRICT;
        CREATE INDEX inbox_by_account ON inbox (account, seq);",
    ),
    // 3: the Delivery Service's view of groups (the PublicGroup itself is
    // in openmls' tables), their members, archives and live feeds.
    M::up(
        "ALTER TABLE groups ADD COLUMN epoch INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE groups ADD COLUMN group_info BLOB NOT NULL DEFAULT x'';
        ALTER TABLE groups ADD COLUMN last_commit TEXT;
        ALTER TABLE groups ADD COLUMN seq INTEGER NOT NULL DEFAULT 0;
        CREATE TABLE members (
            group_id      BLOB NOT NULL,
            leaf          INTEGER NOT NULL,
            account       TEXT NOT NULL,
            signature_key BLOB NOT NULL,
            PRIMARY KEY (group_id, leaf)
        ) STRICT;
        CREATE INDEX members_by_account ON members (group_id, account);
        CREATE TABLE archive (
            id            INTEGER PRIMARY KEY AUTOINCREMENT,
            group_id      BLOB NOT NULL,
            seq           INTEGER NOT NULL,
            stanza_id     TEXT NOT NULL UNIQUE,
            epoch         INTEGER NOT NULL,
            kind          TEXT NOT NULL,
            sender_device TEXT NOT NULL,
            epoch_check   TEXT,
            message       BLOB NOT NULL,
            created_at    INTEGER NOT NULL,
            UNIQUE (group_id, seq)
        ) STRICT;
        CREATE TABLE feed (
            group_id  BLOB NOT NULL,
            device_id TEXT NOT NULL,
            full_jid  TEXT NOT NULL,
            account   TEXT NOT NULL,
            PRIMARY KEY (group_id, device_id)
        ) STRICT;
        CREATE INDEX feed_by_jid ON feed (group_id, full_jid);",
    ),
    // 4: history: when each account was in each group (what its devices
    // may read of the archive), and how far each device has applied.
    M::up(
        "CREATE TABLE group_accounts (
            group_id   BLOB NOT NULL,
            account    TEXT NOT NULL,
            joined_seq INTEGER NOT NULL,
            left_seq   INTEGER,
            PRIMARY KEY (group_id, account, joined_seq)
        ) STRICT;
        CREATE TABLE acks (
            scope     BLOB NOT NULL,
            account   TEXT NOT NULL,
            device_id TEXT NOT NULL,
            seq       INTEGER NOT NULL,
            PRIMARY KEY (scope, account, device_id)
        ) STRICT;
        CREATE INDEX archive_by_time ON archive (group_id, created_at);",
    ),
    // 5: retention: how far each group's archive has been pruned.
    M::up("ALTER TABLE groups ADD COLUMN pruned_seq INTEGER NOT NULL DEFAULT 0;"),
    // 6: the vault: opaque, client-encrypted blobs per account.
    M::up(
        "CREATE TABLE vault (
            account    TEXT NOT NULL,
            name       TEXT NOT NULL,
            version    INTEGER NOT NULL,
            data       BLOB NOT NULL,
            updated_at INTEGER NOT NULL,
            PRIMARY KEY (account, name)
        ) STRICT;",
    ),
    // 7: groups per account (groups.max_groups_per_account).
    M::up("CREATE INDEX members_of_account ON members (account, group_id);"),
    // 8: the live feed keyed by (group, account, device): device ids are
    // unique only within an account (rows whose full JID is not of their
    // account are dropped: devices join again). `group_joins`: the groups
    // an account has itself joined (counted by
    // groups.max_groups_per_account) or has left (`left_group` = 1).
    M::up(
        "CREATE TABLE feed_by_account (
            group_id  BLOB NOT NULL,
            account   TEXT NOT NULL,
            device_id TEXT NOT NULL,
            full_jid  TEXT NOT NULL,
            PRIMARY KEY (group_id, account, device_id)
        ) STRICT;
        INSERT INTO feed_by_account (group_id, account, device_id, full_jid)
            SELECT group_id, account, device_id, full_jid FROM feed
            WHERE substr(full_jid, 1, length(account) + 1) = account || '/';
        DROP TABLE feed;
        ALTER TABLE feed_by_account RENAME TO feed;
        CREATE INDEX feed_by_jid ON feed (group_id, full_jid);
        CREATE INDEX feed_by_device ON feed (account, device_id);
        CREATE TABLE group_joins (
            group_id   BLOB NOT NULL,
            account    TEXT NOT NULL,
            left_group INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (group_id, account)
        ) STRICT;
        CREATE INDEX group_joins_by_account ON group_joins (account, left_group);
        INSERT INTO group_joins (group_id, account) SELECT DISTINCT group_id, account FROM feed;",
    ),
    // 9: archive budgets: octets archived per UTC day, per group (scope
    // 'group', owner = group_id) and per sending account (scope 'account',
    // owner = its bare JID as UTF-8).
    M::up(
        "CREATE TABLE archive_bytes (
            scope TEXT NOT NULL,
            owner BLOB NOT NULL,
            day   INTEGER NOT NULL,
            bytes INTEGER NOT NULL,
            PRIMARY KEY (scope, owner, day)
        ) STRICT;",
    ),
    // 10: resends (xep/ §Resends): every archived group message, by its
    // sender account, kind and the SHA-256 of its MLS bytes, for a day;
    // `seq` is its archive position (the archive row has the rest). The
    // table is its own key index (WITHOUT ROWID): a row costs ~100 octets.
    M::up(
        "CREATE TABLE acceptances (
            group_id   BLOB NOT NULL,
            account    TEXT NOT NULL,
            digest     BLOB NOT NULL,
            kind       TEXT NOT NULL,
            seq        INTEGER NOT NULL,
            created_at INTEGER NOT NULL,
            PRIMARY KEY (group_id, account, digest)
        ) STRICT, WITHOUT ROWID;
        CREATE INDEX acceptances_by_time ON acceptances (created_at);",
    ),
    // 11: low-water warnings (xep/ §Claim Notices): 1 once a claim left
    // the device's pool at or below the mark and the account was warned;
    // an upload for the device clears it.
    M::up("ALTER TABLE devices ADD COLUMN low_warned INTEGER NOT NULL DEFAULT 0;"),
    // 12: the service as an MLS external sender (xep/ §Service Removals):
    // its signature keys (the newest is current; older ones still sign
    // for the groups that list them), and the Remove proposals it issued,
    // by group, epoch and removed leaf.
    M::up(
        "CREATE TABLE service_keys (
            id         INTEGER PRIMARY KEY AUTOINCREMENT,
            private    BLOB NOT NULL,
            public     BLOB NOT NULL,
            created_at INTEGER NOT NULL
        ) STRICT;
        CREATE TABLE service_proposals (
            group_id   BLOB NOT NULL,
            epoch      INTEGER NOT NULL,
            leaf       INTEGER NOT NULL,
            created_at INTEGER NOT NULL,
            PRIMARY KEY (group_id, epoch, leaf)
        ) STRICT;",
    ),
    // 13: account-wide limits decided by one predicate each (see the
    // store's module documentation): per account, the vault's octets and
    // blobs and the groups it has joined, each updated by a conditional
    // UPDATE; the row is also the lock of the account's device list and
    // subscriptions. `kp_seq`: the last upload position of a device's
    // KeyPackages, allocated with the device row's update.
    M::up(
        "CREATE TABLE account_usage (
            account     TEXT PRIMARY KEY,
            vault_bytes INTEGER NOT NULL DEFAULT 0,
            vault_blobs INTEGER NOT NULL DEFAULT 0,
            groups      INTEGER NOT NULL DEFAULT 0
        ) STRICT;
        INSERT INTO account_usage (account, vault_bytes, vault_blobs)
            SELECT account, sum(length(data)), count(*) FROM vault GROUP BY account;
        INSERT INTO account_usage (account, groups)
            SELECT account, count(*) FROM group_joins WHERE left_group = 0 GROUP BY account
            ON CONFLICT (account) DO UPDATE SET groups = excluded.groups;
        ALTER TABLE devices ADD COLUMN kp_seq INTEGER NOT NULL DEFAULT 0;
        UPDATE devices SET kp_seq = coalesce((SELECT max(k.seq) FROM key_packages k
            WHERE k.account = devices.account AND k.device_id = devices.device_id), 0);",
    ),
    // 14: the Delivery Service's copy of each group's public state as one
    // compact blob (store/state.rs) and the proposals queued in its epoch,
    // in place of openmls' JSON tables (groups kept there are converted
    // when the store opens: mls::convert_public_groups).
    M::up(
        "ALTER TABLE groups ADD COLUMN state BLOB;
        CREATE TABLE group_proposals (
            group_id BLOB NOT NULL,
            epoch    INTEGER NOT NULL,
            ref      BLOB NOT NULL,
            proposal BLOB NOT NULL,
            PRIMARY KEY (group_id, ref)
        ) STRICT;",
    ),
];

/// Every migration, in order: [`MIGRATIONS`] (1 to 14), then 15 on, which
/// may run Rust code (append new ones here, and the same change to
/// PostgreSQL's schema in `pg_schema.rs`).
fn migrations() -> Migrations<'static> {
    let mut all = MIGRATIONS.to_vec();
    all.push(
        // 15: compact archives. A group has a number; an archive
        // row's key `pos` is (number << 32) | position, kinds are integers
        // (archive::kind_code), and stanza ids are computed from the position
        // and the message (archive::stanza_id), except those of migrated rows,
        // kept in `archive_ids`. Time filters and retention walk positions, so
        // the time index goes. `resends` replaces `acceptances`: a key per
        // message (groups::resend_key) to its position, for a day or two.
        M::up_with_hook(
            "ALTER TABLE groups ADD COLUMN num INTEGER;
            UPDATE groups SET num = rowid;
            CREATE UNIQUE INDEX groups_by_num ON groups (num);
            CREATE TABLE archive_by_pos (
                pos           INTEGER PRIMARY KEY,
                epoch         INTEGER NOT NULL,
                kind          INTEGER NOT NULL,
                sender_device TEXT NOT NULL,
                epoch_check   TEXT,
                message       BLOB NOT NULL,
                created_at    INTEGER NOT NULL
            ) STRICT;
            INSERT INTO archive_by_pos (pos, epoch, kind, sender_device, epoch_check, message, created_at)
                SELECT g.num << 32 | a.seq, a.epoch,
                       CASE a.kind WHEN 'application' THEN 0 WHEN 'commit' THEN 1 ELSE 2 END,
                       a.sender_device, a.epoch_check, a.message, a.created_at
                FROM archive a JOIN groups g ON g.group_id = a.group_id;
            CREATE TABLE archive_ids (
                pos       INTEGER PRIMARY KEY,
                stanza_id TEXT NOT NULL UNIQUE
            ) STRICT;
            INSERT INTO archive_ids (pos, stanza_id)
                SELECT g.num << 32 | a.seq, a.stanza_id FROM archive a JOIN groups g ON g.group_id = a.group_id;
            DROP TABLE archive;
            ALTER TABLE archive_by_pos RENAME TO archive;
            CREATE TABLE resends (
                grp INTEGER NOT NULL,
                key INTEGER NOT NULL,
                seq INTEGER NOT NULL,
                PRIMARY KEY (grp, key)
            ) STRICT, WITHOUT ROWID;",
            resends_of_acceptances,
    ));
    // 16: counters taken under their row's lock (the next group number), so
    // that two writers never take the same value.
    all.push(M::up(
        "CREATE TABLE counters (
            name  TEXT PRIMARY KEY,
            value INTEGER NOT NULL
        ) STRICT;
        INSERT INTO counters (name, value) VALUES ('group_num', coalesce((SELECT max(num) FROM groups), 0));",
    ));
    // 17: turns of the jobs that one instance at a time runs (turns.rs).
    all.push(M::up(
        "CREATE TABLE turns (
            job    TEXT PRIMARY KEY,
            holder TEXT NOT NULL,
            until  INTEGER NOT NULL
        ) STRICT;",
    ));
    // 18: ratchet trees of epochs, in pages, for joiners that fetch them
    // (xep/ §Fetching the Ratchet Tree); each written once.
    all.push(M::up(
        "CREATE TABLE group_trees (
            group_id BLOB NOT NULL,
            epoch    INTEGER NOT NULL,
            page     INTEGER NOT NULL,
            pages    INTEGER NOT NULL,
            nodes    BLOB NOT NULL,
            PRIMARY KEY (group_id, epoch, page)
        ) STRICT;",
    ));
    // 19: a group's state is written whole only now and then: the commits
    // since (`group_log`) bring it to the current epoch, with the proposals
    // queued in each epoch since, kept until the next whole state.
    all.push(M::up(
        "ALTER TABLE groups ADD COLUMN state_epoch INTEGER;
        ALTER TABLE groups ADD COLUMN state_bytes INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE groups ADD COLUMN log_bytes INTEGER NOT NULL DEFAULT 0;
        UPDATE groups SET state_epoch = epoch, state_bytes = coalesce(length(state), 0);
        CREATE TABLE group_log (
            group_id BLOB NOT NULL,
            epoch    INTEGER NOT NULL,
            message  BLOB NOT NULL,
            PRIMARY KEY (group_id, epoch)
        ) STRICT;",
    ));
    // 20: Commits uploaded in parts (xep/ §Commits in Parts), one upload
    // per account.
    all.push(M::up(
        "CREATE TABLE commit_parts (
            account    TEXT NOT NULL,
            group_id   BLOB NOT NULL,
            sha256     BLOB NOT NULL,
            size       INTEGER NOT NULL,
            start      INTEGER NOT NULL,
            octets     BLOB NOT NULL,
            created_at INTEGER NOT NULL,
            PRIMARY KEY (account, start)
        ) STRICT;",
    ));
    Migrations::new(all)
}

/// Migration 15: the acceptances of the resend window as `resends` keys.
fn resends_of_acceptances(tx: &Transaction) -> HookResult {
    // (group number, resend key, position) of each acceptance.
    let keys: Vec<Option<(i64, i64, i64)>> = {
        let mut st = tx.prepare(
            "SELECT g.group_id, g.num, ac.account, ac.kind, ac.seq, ac.created_at, a.message FROM acceptances ac
             JOIN groups g ON g.group_id = ac.group_id JOIN archive a ON a.pos = g.num << 32 | ac.seq",
        )?;
        let rows = st.query_map([], |r| {
            let Some(kind) = Kind::from_name(&r.get::<_, String>(3)?) else { return Ok(None) };
            let (group_id, account, message): (Vec<u8>, String, Vec<u8>) = (r.get(0)?, r.get(2)?, r.get(6)?);
            let day = r.get::<_, i64>(5)?.div_euclid(DAY);
            Ok(Some((r.get(1)?, resend_key(&group_id, &account, kind, &message, day), r.get(4)?)))
        })?;
        rows.collect::<Result<_, _>>()?
    };
    for (num, key, seq) in keys.into_iter().flatten() {
        tx.execute("INSERT OR REPLACE INTO resends (grp, key, seq) VALUES (?1, ?2, ?3)", params![num, key, seq])?;
    }
    tx.execute_batch("DROP TABLE acceptances;")?;
    Ok(())
}

pub(super) fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    migrations().to_latest(conn)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn migrations_are_valid() {
        super::migrations().validate().unwrap();
    }

    /// Migration 8 keeps the feed entries whose full JID is of their
    /// account, drops those taken over by another account's full JID, and
    /// counts the groups of the kept ones as joined.
    #[test]
    fn the_feed_is_rekeyed_by_account() {
        let mut c = rusqlite::Connection::open_in_memory().unwrap();
        let migrations = super::migrations();
        migrations.to_version(&mut c, 7).unwrap();
        c.execute_batch(
            "INSERT INTO feed (group_id, device_id, full_jid, account) VALUES
               (x'01', 'phone', 'bob@example.org/phone', 'bob@example.org'),
               (x'01', 'laptop', 'mallory@example.org/pc', 'alice@example.org');",
        )
        .unwrap();
        migrations.to_latest(&mut c).unwrap();
        let feed: Vec<(String, String, String)> = c
            .prepare("SELECT account, device_id, full_jid FROM feed")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(feed, [("bob@example.org".into(), "phone".into(), "bob@example.org/phone".into())]);
        let joined: Vec<String> =
            c.prepare("SELECT account FROM group_joins WHERE left_group = 0").unwrap().query_map([], |r| r.get(0)).unwrap().collect::<Result<_, _>>().unwrap();
        assert_eq!(joined, ["bob@example.org"]);
    }

    /// Migration 13 counts each account's vault and joined groups, and
    /// starts each device's upload positions after its stored packages.
    #[test]
    fn usage_is_counted_from_the_stored_rows() {
        let mut c = rusqlite::Connection::open_in_memory().unwrap();
        let migrations = rusqlite_migration::Migrations::from_slice(super::MIGRATIONS);
        migrations.to_version(&mut c, 12).unwrap();
        c.execute_batch(
            "INSERT INTO vault VALUES ('a', 'x', 1, x'0102', 0), ('a', 'y', 3, x'03', 0), ('b', 'x', 1, x'', 0);
             INSERT INTO group_joins VALUES (x'01', 'a', 0), (x'02', 'a', 1), (x'01', 'c', 0);
             INSERT INTO devices (account, device_id, signature_key, expires_at, published_at)
               VALUES ('a', 'd', x'01', 9, 0), ('a', 'e', x'02', 9, 0);
             INSERT INTO key_packages VALUES (x'01', 'a', 'd', 1, 0, 9, x'', 4), (x'02', 'a', 'd', 1, 0, 9, x'', 7);",
        )
        .unwrap();
        migrations.to_latest(&mut c).unwrap();
        let usage: Vec<(String, i64, i64, i64)> = c
            .prepare("SELECT account, vault_bytes, vault_blobs, groups FROM account_usage ORDER BY account")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(usage, [("a".into(), 3, 2, 1), ("b".into(), 0, 1, 0), ("c".into(), 0, 0, 1)]);
        let seqs: Vec<i64> =
            c.prepare("SELECT kp_seq FROM devices ORDER BY device_id").unwrap().query_map([], |r| r.get(0)).unwrap().collect::<Result<_, _>>().unwrap();
        assert_eq!(seqs, [7, 0]);
    }
}

#[cfg(test)]
mod compact_archive {
    use crate::config::StoreConfig;
    use crate::protocol::groups::Kind;
    use crate::store::{Filter, PageStart, Source, Store};

    /// Migration 15 carries a group's archive over: its stanza ids still
    /// name their positions, pages show them with their kinds, a message
    /// accepted within the resend window is still answered as a resend
    /// (with its old id), and new items take the next positions.
    #[tokio::test]
    async fn the_archive_is_rekeyed_by_position() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.sqlite3");
        let now = crate::protocol::now();
        {
            let mut c = rusqlite::Connection::open(&path).unwrap();
            super::migrations().to_version(&mut c, 12).unwrap();
            c.execute_batch(&format!(
                "INSERT INTO groups (group_id, created_at, epoch, seq) VALUES (x'0a', {now}, 1, 2), (x'0b', {now}, 0, 0);
                 INSERT INTO archive (group_id, seq, stanza_id, epoch, kind, sender_device, epoch_check, message, created_at) VALUES
                   (x'0a', 1, 'oldmessageidaaaaaaaa', 0, 'application', 'phone', NULL, x'a1', {now}),
                   (x'0a', 2, 'oldcommitidaaaaaaaaa', 0, 'commit', 'laptop', 'check', x'c0', {now});
                 INSERT INTO acceptances (group_id, account, digest, kind, seq, created_at) VALUES
                   (x'0a', 'bob@example.org', x'00', 'application', 1, {now});"
            ))
            .unwrap();
        }
        let store = Store::open(&StoreConfig { path, ..StoreConfig::default() }).unwrap();
        let schema: Vec<String> = store
            .read(|c| {
                let sql = "SELECT name FROM sqlite_master WHERE tbl_name IN ('archive', 'acceptances') ORDER BY name";
                c.query_map(sql, crate::store::sql::params![], |r| r.get(0))
            })
            .await
            .unwrap();
        assert_eq!(schema, ["archive"], "no index on the archive, no acceptances");
        let g = || Source::Group(vec![0x0a]);
        let ids = vec!["oldmessageidaaaaaaaa".to_string(), "oldcommitidaaaaaaaaa".into()];
        assert_eq!(store.positions(g(), ids.clone()).await.unwrap(), [Some(1), Some(2)]);
        assert_eq!(store.positions(Source::Group(vec![0x0b]), ids.clone()).await.unwrap(), [None, None]);
        let page = store.archive_page(g(), Filter::default(), PageStart::First, 10).await.unwrap();
        let seen: Vec<_> = page.items.iter().map(|i| (i.stanza_id.as_str(), i.kind.as_str(), i.epoch_check.as_deref(), i.message.clone())).collect();
        assert_eq!(seen, [(ids[0].as_str(), "application", None, vec![0xa1]), (ids[1].as_str(), "commit", Some("check"), vec![0xc0])]);

        let resend = store.acceptance(vec![0x0a], "bob@example.org".into(), Kind::Application, vec![0xa1]).await.unwrap();
        assert_eq!(resend.map(|a| (a.archived.seq, a.archived.stanza_id, a.sender_device)), Some((1, ids[0].clone(), "phone".into())));
        let other = store.acceptance(vec![0x0a], "alice@example.org".into(), Kind::Application, vec![0xa1]).await.unwrap();
        assert_eq!(other, None);

        let next = store
            .group_tx(vec![0x0a], |tx| tx.append("bob@example.org", 1, Kind::Application, "phone", None, b"new"))
            .await
            .unwrap();
        assert_eq!(next.seq, 3);
        assert_eq!(store.positions(g(), vec![next.stanza_id]).await.unwrap(), [Some(3)]);
        let first = store.group_tx(vec![0x0b], |tx| tx.append("bob@example.org", 0, Kind::Commit, "phone", Some("c"), b"m")).await.unwrap();
        assert_eq!(first.seq, 1, "each group has its own positions");
        // Retention keeps the unacknowledged Commit and what follows.
        assert_eq!(store.prune_history(now + 10).await.unwrap(), 1);
        assert_eq!(store.positions(g(), ids).await.unwrap(), [None, Some(2)]);
        let kept: i64 = store.read(|c| c.query_row("SELECT count(*) FROM archive_ids", crate::store::sql::params![], |r| r.get(0))).await.unwrap();
        assert_eq!(kept, 1, "the pruned item's id went with it");
        store.close().await;
    }
}
