//! MLS objects for tests, built with openmls directly so that tests can
//! also make the invalid ones a real client never would.

use openmls::prelude::{
    BasicCredential, Capabilities, Ciphersuite, CredentialWithKey, Extension, ExtensionType, Extensions, KeyPackage,
    Lifetime, MlsMessageOut, UnknownExtension,
};
use openmls_basic_credential::SignatureKeyPair;
use openmls_rust_crypto::OpenMlsRustCrypto;
use openmls_traits::types::SignatureScheme;
use tls_codec::Serialize as _;
use xmpp_mls::protocol::devices::Device;
use xmpp_parsers::jid::BareJid;

pub const SUITE: Ciphersuite = Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519;

/// A signature key of a would-be device, with an in-memory provider.
pub struct TestSigner {
    pub account: BareJid,
    pub signer: SignatureKeyPair,
    pub provider: OpenMlsRustCrypto,
}

/// How to build a KeyPackage; defaults make a valid one.
pub struct KpOptions {
    /// Credential identity; default `xmpp:<account>`.
    pub identity: Option<String>,
    pub lifetime: Option<Lifetime>,
    pub suite: Ciphersuite,
    pub last_resort: bool,
    /// Octets of a private KeyPackage extension, to make large packages.
    pub padding: usize,
}

/// A private-use extension type (RFC 9420 §17.3) for padding.
const PADDING: u16 = 0xff00;

impl Default for KpOptions {
    fn default() -> Self {
        Self { identity: None, lifetime: None, suite: SUITE, last_resort: false, padding: 0 }
    }
}

impl TestSigner {
    pub fn new(account: &str) -> Self {
        Self {
            account: BareJid::new(account).unwrap(),
            signer: SignatureKeyPair::new(SignatureScheme::ED25519).unwrap(),
            provider: OpenMlsRustCrypto::default(),
        }
    }

    pub fn device(&self, id: &str, expires: Option<i64>) -> Device {
        Device { id: id.into(), signature_key: self.signer.to_public_vec(), label: None, expires }
    }

    /// An MLSMessage carrying a KeyPackage.
    pub fn kp(&self, opts: KpOptions) -> Vec<u8> {
        let identity = opts.identity.unwrap_or_else(|| format!("xmpp:{}", self.account));
        let credential = CredentialWithKey {
            credential: BasicCredential::new(identity.into_bytes()).into(),
            signature_key: self.signer.to_public_vec().into(),
        };
        let mut extensions = vec![ExtensionType::LastResort];
        if opts.padding > 0 {
            extensions.push(ExtensionType::Unknown(PADDING));
        }
        let capabilities = Capabilities::builder().extensions(extensions).build();
        let mut b = KeyPackage::builder().leaf_node_capabilities(capabilities);
        if opts.padding > 0 {
            let padding = Extension::Unknown(PADDING, UnknownExtension(vec![0; opts.padding]));
            b = b.key_package_extensions(Extensions::single(padding).unwrap());
        }
        if let Some(l) = opts.lifetime {
            b = b.key_package_lifetime(l);
        }
        if opts.last_resort {
            b = b.mark_as_last_resort();
        }
        let bundle = b.build(opts.suite, &self.provider, &self.signer, credential).unwrap();
        MlsMessageOut::from(bundle.key_package().clone()).tls_serialize_detached().unwrap()
    }

    pub fn valid_kp(&self) -> Vec<u8> {
        self.kp(KpOptions::default())
    }

    pub fn last_resort_kp(&self) -> Vec<u8> {
        self.kp(KpOptions { last_resort: true, ..KpOptions::default() })
    }
}
