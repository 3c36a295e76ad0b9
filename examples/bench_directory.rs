//! Directory hot paths beside the raw library cost, measured in one run:
//!
//! - KeyPackage check (`protocol::keypackages::verify`: decode, AS check,
//!   signatures, lifetime, ref) against openmls' own `validate` alone;
//! - claims through the store (one transaction per claim, batched writer,
//!   notices) against a bare SQLite `DELETE … RETURNING` per claim with the
//!   same durability (WAL, synchronous=FULL, one transaction each).
//!
//! `cargo run --release --example bench_directory`; prints medians of 5 runs.

use std::time::Instant;

use openmls::prelude::{
    BasicCredential, Capabilities, CredentialWithKey, ExtensionType, KeyPackage, KeyPackageIn, MlsMessageBodyIn,
    MlsMessageIn, MlsMessageOut, ProtocolVersion,
};
use openmls_basic_credential::SignatureKeyPair;
use openmls_rust_crypto::OpenMlsRustCrypto;
use openmls_traits::types::SignatureScheme;
use openmls_traits::OpenMlsProvider;
use tls_codec::{Deserialize, Serialize};
use xmpp_mls::config::StoreConfig;
use xmpp_mls::protocol::devices::Device;
use xmpp_mls::protocol::keypackages::{verify, Claim, Policy};
use xmpp_mls::store::{ClaimContext, Store};
use xmpp_parsers::jid::BareJid;

const PACKAGES: usize = 200;
const RUNS: usize = 5;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn key_packages(account: &BareJid, signer: &SignatureKeyPair, provider: &OpenMlsRustCrypto) -> Vec<Vec<u8>> {
    let credential = CredentialWithKey {
        credential: BasicCredential::new(format!("xmpp:{account}").into_bytes()).into(),
        signature_key: signer.to_public_vec().into(),
    };
    (0..PACKAGES)
        .map(|_| {
            let caps = Capabilities::builder().extensions(vec![ExtensionType::LastResort]).build();
            let bundle = KeyPackage::builder()
                .leaf_node_capabilities(caps)
                .build(xmpp_mls::client::CIPHERSUITE, provider, signer, credential.clone())
                .unwrap();
            MlsMessageOut::from(bundle.key_package().clone()).tls_serialize_detached().unwrap()
        })
        .collect()
}

/// Per-second rate of `f` over `n` items, median of RUNS.
fn rate(n: usize, mut f: impl FnMut()) -> f64 {
    median(
        (0..RUNS)
            .map(|_| {
                let t = Instant::now();
                f();
                n as f64 / t.elapsed().as_secs_f64()
            })
            .collect(),
    )
}

fn bench_verify(account: &BareJid, messages: &[Vec<u8>], device: &Device, provider: &OpenMlsRustCrypto) {
    let policy = Policy { cipher_suites: vec![1, 3], max_lifetime_secs: 90 * 86400, clock_skew_secs: 300 };
    let devices = vec![device.clone()];
    let now = xmpp_mls::protocol::now();
    let raw = rate(messages.len(), || {
        for m in messages {
            let MlsMessageBodyIn::KeyPackage(kp) = MlsMessageIn::tls_deserialize_exact(m).unwrap().extract() else {
                panic!()
            };
            let kp: KeyPackageIn = kp;
            kp.validate(provider.crypto(), ProtocolVersion::Mls10).unwrap();
        }
    });
    let ours = rate(messages.len(), || {
        for m in messages {
            verify(provider.crypto(), m, account, &devices, &policy, now).unwrap();
        }
    });
    println!("keypackage_verify: {ours:.0} /s (ratio vs openmls validate alone: {:.2})", ours / raw);
}

async fn bench_claims(account: &BareJid, messages: &[Vec<u8>], device: &Device, provider: &OpenMlsRustCrypto) {
    let policy = Policy { cipher_suites: vec![1, 3], max_lifetime_secs: 90 * 86400, clock_skew_secs: 300 };
    let now = xmpp_mls::protocol::now();
    let mut ours = Vec::new();
    let mut raw = Vec::new();
    for _ in 0..RUNS {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&StoreConfig { path: dir.path().join("s.db"), ..StoreConfig::default() }).unwrap();
        let event = minidom::Element::builder("event", "urn:x").build();
        store.publish_device(account.to_string(), device.clone(), event, 16, now).await.unwrap();
        let verified: Vec<_> = messages
            .iter()
            .map(|m| verify(provider.crypto(), m, account, std::slice::from_ref(device), &policy, now).unwrap())
            .collect();
        store.store_key_packages(account.to_string(), verified, PACKAGES, now).await.unwrap();
        // Concurrent claimers, as on a busy service: the writer batches them.
        let t = Instant::now();
        let tasks: Vec<_> = (0..PACKAGES)
            .map(|i| {
                let store = store.clone();
                let ctx = ClaimContext {
                    account: account.to_string(),
                    claimer: format!("c{i}@example.org"),
                    low_water: 0,
                    now,
                };
                tokio::spawn(async move { store.claim(ctx, Claim::default()).await.unwrap() })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        ours.push(PACKAGES as f64 / t.elapsed().as_secs_f64());
        store.close().await;

        let conn = rusqlite::Connection::open(dir.path().join("raw.db")).unwrap();
        conn.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;
             CREATE TABLE kp (id INTEGER PRIMARY KEY, data BLOB);",
        )
        .unwrap();
        for m in messages {
            conn.execute("INSERT INTO kp (data) VALUES (?1)", [m]).unwrap();
        }
        let t = Instant::now();
        for _ in 0..PACKAGES {
            conn.execute_batch("BEGIN").unwrap();
            let _: Vec<u8> = conn
                .query_row("DELETE FROM kp WHERE id = (SELECT min(id) FROM kp) RETURNING data", [], |r| r.get(0))
                .unwrap();
            conn.execute_batch("COMMIT").unwrap();
        }
        raw.push(PACKAGES as f64 / t.elapsed().as_secs_f64());
    }
    let (ours, raw) = (median(ours), median(raw));
    println!("keypackage_claims: {ours:.0} /s (ratio vs raw SQLite delete per transaction: {:.2})", ours / raw);
}

#[tokio::main]
async fn main() {
    let account = BareJid::new("alice@example.org").unwrap();
    let provider = OpenMlsRustCrypto::default();
    let signer = SignatureKeyPair::new(SignatureScheme::ED25519).unwrap();
    let device = Device { id: "d1".into(), signature_key: signer.to_public_vec(), label: None, expires: Some(i64::MAX / 2) };
    let messages = key_packages(&account, &signer, &provider);
    bench_verify(&account, &messages, &device, &provider);
    bench_claims(&account, &messages, &device, &provider).await;
}
