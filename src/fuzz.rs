//! Fuzz targets: one function per parser of untrusted input, taking any
//! bytes and calling on them what the service or the client calls. None may
//! panic. cargo-fuzz drives them (`fuzz/`, `scripts/fuzz`); on stable Rust
//! the smoke test below replays the seeds (`fuzz/corpus/<target>/`),
//! mutations of them and the inputs that once crashed
//! (`fuzz/regressions/<target>/`).

use minidom::Element;
use openmls::group::{ProposalStore, PublicGroup};
use openmls::prelude::ContentType;
use openmls_memory_storage::MemoryStorage;
use openmls_rust_crypto::RustCrypto;
use xmpp_parsers::disco::DiscoInfoResult;
use xmpp_parsers::jid::{BareJid, Jid};
use xmpp_parsers::stanza_error::StanzaError;

use crate::client::{DeviceKey, KdfParams, KeyRing, Unlock};
use crate::config::{Config, SUPPORTED_CIPHER_SUITES};
use crate::protocol::address::Address;
use crate::protocol::devices::Device;
use crate::protocol::groups::{
    parse_group_info, Accepted, CommitBundle, Create, GroupMessage, Proposal, Welcome, WrongEpoch,
};
use crate::protocol::keypackages::{
    parse_claimed, parse_rejections, upload_bytes, upload_texts, verify, Claim, KeyPackageInfo, Policy,
};
use crate::protocol::mam::{Ack, MamQuery};
use crate::protocol::notices::Notice;
use crate::protocol::pubsub::{parse_items, Event, PubsubRequest, NS_PUBSUB};
use crate::protocol::vault::{parse_vault_result, parse_version_mismatch, VaultItem, VaultRequest};
use crate::protocol::mls;
use crate::xmpp::bounded::Bounded;

/// The largest stanza Prosody passes on (its default `c2s_stanza_size_limit`).
pub const MAX_STANZA: usize = 256 * 1024;
/// The group the MLS seeds belong to, as the JID they are sent to names it.
pub const GROUP_ID: &[u8] = b"xmpp-mls fuzz group";
/// The account of the KeyPackage seeds.
pub const ACCOUNT: &str = "alice@example.org";
/// The time KeyPackages are verified at, fixed so that runs repeat.
pub const NOW: i64 = 1_795_000_000;
/// What the vault target opens records with; the seeds were sealed with
/// other secrets, so nothing may open.
const PASSPHRASE: &str = "fuzz";
const DATA_KEY: [u8; 32] = [7; 32];

/// (a) A stanza from the server, read as the component reads its stream:
/// every protocol parser on every element.
pub fn stanza(data: &[u8]) {
    if data.len() > MAX_STANZA {
        return;
    }
    let Ok(Bounded(root)) = xso::from_bytes::<Bounded>(data) else { return };
    let mut todo = vec![&root];
    while let Some(el) = todo.pop() {
        todo.extend(el.children());
        element(el);
    }
}

fn element(el: &Element) {
    for jid in ["to", "from", "jid", "by"].into_iter().filter_map(|a| Jid::new(el.attr(a)?).ok()) {
        let _ = Address::parse(&jid);
    }
    let _ = Device::parse(el.attr("id"), el);
    if let Ok(PubsubRequest::Publish { items, .. }) = PubsubRequest::try_from(el) {
        for item in &items {
            let _ = Device::parse(item.id.as_deref(), &item.payload);
        }
        for text in upload_texts(&items).unwrap_or_default() {
            let _ = upload_bytes(&text, usize::MAX);
        }
    }
    let _ = (Event::parse(el), parse_items(el, NS_PUBSUB), Notice::find(el));
    let _ = (KeyPackageInfo::parse("ref", el), Claim::parse(el), parse_claimed(el), parse_rejections(el));
    match el.name() {
        "query" => drop(DiscoInfoResult::try_from(el.clone())),
        "error" => drop(StanzaError::try_from(el.clone())),
        _ => {}
    }
    let _ = (Accepted::parse(el), WrongEpoch::parse(el), parse_group_info(el), Welcome::find(el));
    let _ = (Create::parse(el), CommitBundle::parse(el), Proposal::parse(el));
    if let Ok(m) = GroupMessage::parse(el) {
        let _ = mls::application_epoch(&m.message, GROUP_ID);
    }
    let _ = (MamQuery::parse(el), Ack::parse(el));
    let _ = (VaultRequest::parse(el), VaultItem::parse(el), parse_vault_result(el), parse_version_mismatch(el));
}

/// (b) An MLSMessage as the Delivery Service reads it: handshakes, the
/// public header of application messages, Welcomes, and GroupInfos down to
/// the public group they describe.
pub fn mls_message(data: &[u8]) {
    let _ = mls::public_message(data, GROUP_ID, ContentType::Commit);
    let _ = mls::public_message(data, GROUP_ID, ContentType::Proposal);
    let _ = mls::application_epoch(data, GROUP_ID);
    let _ = mls::welcome(data);
    if let Ok((info, Some(tree))) = mls::group_info(data, GROUP_ID) {
        let crypto = RustCrypto::default();
        let _ = PublicGroup::from_external(&crypto, &MemoryStorage::default(), tree, info, ProposalStore::new());
    }
}

/// (b) A KeyPackage as the directory verifies an upload and a client a
/// claim: the first 32 bytes are the signature key of the account's one
/// device, the rest is the MLSMessage.
pub fn key_package(data: &[u8]) {
    let Some((key, message)) = data.split_at_checked(32) else { return };
    let account = BareJid::new(ACCOUNT).expect("a valid JID");
    let devices = [Device { id: "fuzz".into(), signature_key: key.to_vec(), label: None, expires: None }];
    let policy =
        Policy { cipher_suites: SUPPORTED_CIPHER_SUITES.to_vec(), max_lifetime_secs: 90 * 86400, clock_skew_secs: 300 };
    let _ = verify(&RustCrypto::default(), message, &account, &devices, &policy, NOW);
}

/// (c) A vault record as the client opens what the service hands back:
/// as the key record, with a passphrase, and as a blob, with a data key.
pub fn vault_record(data: &[u8]) {
    let account = BareJid::new(ACCOUNT).expect("a valid JID");
    assert!(KeyRing::decode(data, &account, Unlock::Passphrase(PASSPHRASE)).is_err(), "a key record opened without its passphrase");
    static KEY: std::sync::OnceLock<DeviceKey> = std::sync::OnceLock::new();
    let key = KEY.get_or_init(|| DeviceKey::generate().expect("a key pair"));
    assert!(KeyRing::decode(data, &account, Unlock::Device(key)).is_err(), "a key record opened by a device it was never locked to");
    let ring = KeyRing::new(KdfParams::default(), [0; 16], DATA_KEY);
    assert!(ring.open_blob(&account, "blob", 1, data).is_err(), "a blob opened without its key");
}

/// (d) The configuration: TOML, then after a NUL byte the environment
/// overrides, one `NAME=VALUE` a line.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (toml, env) = text.split_once('\0').unwrap_or((text, ""));
    let env = env.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_owned(), v.to_owned()));
    let _ = Config::from_toml(toml, env);
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use xmpp_parsers::jid::BareJid;

    use super::{KeyRing, GROUP_ID};

    /// Mutated inputs per target.
    const MUTATIONS: usize = 5000;

    fn dir(kind: &str, target: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz").join(kind).join(target)
    }

    /// The files of a directory (none if it does not exist), sorted by name.
    fn inputs(dir: &Path) -> Vec<Vec<u8>> {
        let mut paths: Vec<PathBuf> =
            std::fs::read_dir(dir).map(|d| d.map(|e| e.unwrap().path()).collect()).unwrap_or_default();
        paths.sort();
        paths.iter().map(|p| std::fs::read(p).unwrap()).collect()
    }

    /// xorshift64: deterministic, so a failure repeats.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: usize) -> usize {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % n.max(1) as u64) as usize
        }
    }

    /// One to four edits of `input`: bit flips, byte inserts and deletes,
    /// truncation, splicing with `other`.
    fn mutate(rng: &mut Rng, input: &[u8], other: &[u8]) -> Vec<u8> {
        let mut out = input.to_vec();
        for _ in 0..=rng.below(4) {
            let at = rng.below(out.len() + 1);
            match rng.below(5) {
                0 if at < out.len() => out[at] ^= 1 << rng.below(8),
                1 => out.insert(at, rng.below(256) as u8),
                2 if at < out.len() => drop(out.remove(at)),
                3 => out.truncate(at),
                _ => {
                    let from = rng.below(other.len() + 1);
                    out.splice(at.., other[from..].iter().copied());
                }
            }
        }
        out
    }

    /// Runs `target` on its seeds, its regressions and mutations of the seeds.
    fn smoke(name: &str, target: fn(&[u8])) {
        let seeds = inputs(&dir("corpus", name));
        assert!(!seeds.is_empty(), "no seeds in fuzz/corpus/{name}");
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mutated = (0..MUTATIONS).map(|_| {
            let (a, b) = (&seeds[rng.below(seeds.len())], &seeds[rng.below(seeds.len())]);
            mutate(&mut rng, a, b)
        });
        for input in seeds.iter().cloned().chain(inputs(&dir("regressions", name))).chain(mutated) {
            if std::panic::catch_unwind(|| target(&input)).is_err() {
                let path = std::env::temp_dir().join(format!("xmpp-mls-fuzz-{name}"));
                std::fs::write(&path, &input).unwrap();
                panic!("fuzz target {name} panicked on the input saved in {}", path.display());
            }
        }
    }

    #[test]
    fn targets_survive_seeds_mutations_and_regressions() {
        type Target = fn(&[u8]);
        let targets: [(&str, Target); 5] = [
            ("stanza", super::stanza),
            ("mls_message", super::mls_message),
            ("key_package", super::key_package),
            ("vault_record", super::vault_record),
            ("config", super::config),
        ];
        for (name, target) in targets {
            smoke(name, target);
        }
    }

    /// Writes the MLS and vault seeds, made with the client library:
    /// `cargo test --lib fuzz::tests::write_seeds -- --ignored`.
    #[test]
    #[ignore]
    fn write_seeds() {
        use openmls::prelude::{
            GroupId, KeyPackageIn, LeafNodeIndex, MlsGroup, MlsMessageBodyIn, MlsMessageIn, ProtocolVersion,
        };
        use openmls_traits::OpenMlsProvider;
        use tls_codec::{Deserialize, Serialize};

        use crate::client::{Device, KdfParams};

        let write = |target: &str, name: &str, bytes: &[u8]| {
            std::fs::create_dir_all(dir("corpus", target)).unwrap();
            std::fs::write(dir("corpus", target).join(name), bytes).unwrap();
        };
        let tmp = tempfile::tempdir().unwrap();
        let device = |account: &str| Device::create(&tmp.path().join(account), BareJid::new(account).unwrap(), None).unwrap();
        let (alice, bob) = (device(super::ACCOUNT), device("bob@example.org"));

        let kp = alice.key_packages(1).unwrap().remove(0);
        write("key_package", "valid", &[alice.signature_key(), &kp].concat());
        write("key_package", "last-resort", &[alice.signature_key(), &alice.last_resort_key_package().unwrap().0].concat());
        write("key_package", "other-device", &[bob.signature_key(), &kp].concat());
        write("mls_message", "key-package", &kp);

        let (p, signer) = (alice.provider(), alice.signer());
        let config = crate::client::groups::create_config(Default::default());
        let mut group =
            MlsGroup::new_with_group_id(p, signer, &config, GroupId::from_slice(GROUP_ID), alice.credential_with_key())
                .unwrap();
        let bytes = |m: openmls::prelude::MlsMessageOut| m.tls_serialize_detached().unwrap();
        write("mls_message", "group-info-1", &bytes(group.export_group_info(p.crypto(), signer, true).unwrap()));
        let MlsMessageBodyIn::KeyPackage(bob_kp) =
            MlsMessageIn::tls_deserialize_exact(&bob.key_packages(1).unwrap()[0]).unwrap().extract()
        else {
            unreachable!()
        };
        let bob_kp = KeyPackageIn::validate(bob_kp, p.crypto(), ProtocolVersion::Mls10).unwrap();
        let (commit, welcome, _) = group.add_members(p, signer, &[bob_kp]).unwrap();
        group.merge_pending_commit(p).unwrap();
        write("mls_message", "commit", &bytes(commit));
        write("mls_message", "welcome", &bytes(welcome));
        write("mls_message", "group-info-2", &bytes(group.export_group_info(p.crypto(), signer, true).unwrap()));
        write("mls_message", "application", &bytes(group.create_message(p, signer, b"hello").unwrap()));
        let (proposal, _) = group.propose_remove_member(p, signer, LeafNodeIndex::new(1)).unwrap();
        write("mls_message", "proposal", &bytes(proposal));

        let account = BareJid::new(super::ACCOUNT).unwrap();
        let cheapest = KdfParams { m_kib: 8, t: 1, p: 1 };
        let device = crate::client::DeviceKey::generate().unwrap();
        let ring = KeyRing::new(cheapest, [1; 16], [2; 32]).with_device("seed", *device.public()).unwrap();
        write("vault_record", "keys", &ring.encode(&account, Some("not the fuzz passphrase")).unwrap());
        write("vault_record", "blob", &ring.seal_blob(&account, "blob", 1, b"sealed with another key"));
    }
}
