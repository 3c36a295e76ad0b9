//! Vault bytes per epoch state against group size, beside a JSON
//! serialisation of the same state (openmls' own storage encoding).
//!
//! `cargo run --release --example bench_vault`

use openmls::group::{MlsGroupCreateConfig, MIXED_PLAINTEXT_WIRE_FORMAT_POLICY};
use openmls::prelude::{BasicCredential, CredentialWithKey, GroupId, KeyPackage, MlsGroup};
use openmls_basic_credential::SignatureKeyPair;
use openmls_rust_crypto::OpenMlsRustCrypto;
use openmls_traits::types::SignatureScheme;
use xmpp_mls::client::{pack_snapshot, Device, CIPHERSUITE};
use xmpp_parsers::jid::BareJid;

/// Sealing adds the blob header (8), the nonce (24) and the tag (16).
const SEAL: usize = 8 + 24 + 16;

fn member_key_package(i: usize) -> KeyPackage {
    let provider = OpenMlsRustCrypto::default();
    let signer = SignatureKeyPair::new(SignatureScheme::ED25519).unwrap();
    let credential = CredentialWithKey {
        credential: BasicCredential::new(format!("xmpp:m{i}@example.org").into_bytes()).into(),
        signature_key: signer.to_public_vec().into(),
    };
    KeyPackage::builder().build(CIPHERSUITE, &provider, &signer, credential).unwrap().key_package().clone()
}

fn main() {
    for size in [3usize, 10, 50] {
        let dir = tempfile::tempdir().unwrap();
        let device = Device::create(&dir.path().join("d.sqlite3"), BareJid::new("alice@example.org").unwrap(), None).unwrap();
        let config = MlsGroupCreateConfig::builder()
            .wire_format_policy(MIXED_PLAINTEXT_WIRE_FORMAT_POLICY)
            .use_ratchet_tree_extension(true)
            .ciphersuite(CIPHERSUITE)
            .build();
        let id = [7u8; 16];
        let mut group = MlsGroup::new_with_group_id(
            device.provider(),
            device.signer(),
            &config,
            GroupId::from_slice(&id),
            device.credential_with_key(),
        )
        .unwrap();
        let kps: Vec<KeyPackage> = (1..size).map(member_key_package).collect();
        group.add_members(device.provider(), device.signer(), &kps).unwrap();
        group.merge_pending_commit(device.provider()).unwrap();
        let rows = device.group_rows(&id).unwrap();
        let json: usize = rows.iter().map(|(_, kind, data)| kind.len() + data.len() + 6).sum::<usize>() + 2;
        let vault = pack_snapshot(&rows).unwrap().len() + SEAL;
        println!("vault_snapshot_{size}: {vault} bytes (ratio vs JSON {json} bytes: {:.2})", vault as f64 / json as f64);
    }
}
