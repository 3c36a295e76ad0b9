//! Service discovery (XEP-0030) answers and the XEP-0128 limits form
//! (xep/ §Discovering the service).

use xmpp_parsers::data_forms::{DataForm, DataFormType, Field, FieldType};
use xmpp_parsers::disco::{DiscoInfoResult, DiscoItemsResult, Identity, Item};
use xmpp_parsers::jid::Jid;
use xmpp_parsers::ns;

use super::mam::{NS_MAM, NS_MAM_EXTENDED};
use super::{devices, keypackages, NS};

pub const PING: &str = "urn:xmpp:ping";
const PUBSUB: &str = "http://jabber.org/protocol/pubsub";

/// Features of the service JID: exactly what is implemented.
pub const SERVICE_FEATURES: &[&str] =
    &[ns::DISCO_INFO, ns::DISCO_ITEMS, NS, devices::NODE, keypackages::NODE, VAULT, PING];
/// The vault at directory JIDs (xep/ §Vault).
pub const VAULT: &str = "urn:xmpp:mls:0:vault";
/// Features of an account's directory JID: the XEP-0060 subset it speaks.
pub const DIRECTORY_FEATURES: &[&str] = &[
    ns::DISCO_INFO,
    ns::DISCO_ITEMS,
    PUBSUB,
    "http://jabber.org/protocol/pubsub#publish",
    "http://jabber.org/protocol/pubsub#retract-items",
    "http://jabber.org/protocol/pubsub#retrieve-items",
    "http://jabber.org/protocol/pubsub#subscribe",
    NS_MAM,
    NS_MAM_EXTENDED,
    NS,
];

/// Limits announced in the XEP-0128 form (FORM_TYPE `urn:xmpp:mls:0`).
pub struct AnnouncedLimits {
    pub max_payload_size: usize,
    /// Largest stanza the service sends.
    pub max_stanza_out: usize,
    pub max_devices_per_account: usize,
    pub max_key_packages_per_device: usize,
    pub max_key_package_size: usize,
    /// Seconds.
    pub max_key_package_lifetime: u64,
    /// Ordinary KeyPackages of a device at which its owner is warned.
    pub low_water: u32,
    pub cipher_suites: Vec<u16>,
    /// Past epochs whose application messages are still accepted.
    pub max_past_epochs: u64,
    /// Largest page of a MAM query.
    pub max_page_size: usize,
    pub max_vault_blob_size: usize,
    pub vault_quota: usize,
    pub max_vault_blobs: usize,
    pub max_members: usize,
    pub max_groups_per_account: usize,
    /// KeyPackages of one account one claimer may claim in a row, then one
    /// per `claim_refill` seconds.
    pub claim_burst: u32,
    pub claim_refill: u64,
    /// Stanzas per second one account may send, after `account_burst`.
    pub account_rate: u32,
    pub account_burst: u32,
    /// KeyPackage verifications of one account in a row, then one per
    /// `key_package_refill` seconds.
    pub key_package_burst: u32,
    pub key_package_refill: u64,
    /// Octets of MLS messages archived per UTC day, per group and per account.
    pub group_archive_bytes_per_day: u64,
    pub account_archive_bytes_per_day: u64,
    /// The service's `external_senders` entry (TLS-serialised
    /// ExternalSender), if it has a key (xep/ §Service Removals).
    pub external_sender: Option<Vec<u8>>,
}

/// The limits form's field with the service's external-sender entry.
pub const EXTERNAL_SENDER: &str = "external-sender";

fn field(var: &str, value: impl ToString) -> Field {
    Field::new(var, FieldType::TextSingle).with_value(&value.to_string())
}

pub fn service_info(limits: &AnnouncedLimits) -> DiscoInfoResult {
    let mut suites = Field::new("cipher-suites", FieldType::TextMulti);
    suites.values = limits.cipher_suites.iter().map(u16::to_string).collect();
    let form = DataForm::new(
        DataFormType::Result_,
        NS,
        vec![
            field("max-payload-size", limits.max_payload_size),
            field("max-stanza-out", limits.max_stanza_out),
            field("max-devices-per-account", limits.max_devices_per_account),
            field("max-key-packages-per-device", limits.max_key_packages_per_device),
            field("max-key-package-size", limits.max_key_package_size),
            field("max-key-package-lifetime", limits.max_key_package_lifetime),
            field("low-water", limits.low_water),
            suites,
            field("max-past-epochs", limits.max_past_epochs),
            field("max-page-size", limits.max_page_size),
            field("max-vault-blob-size", limits.max_vault_blob_size),
            field("vault-quota", limits.vault_quota),
            field("max-vault-blobs", limits.max_vault_blobs),
            field("max-members", limits.max_members),
            field("max-groups-per-account", limits.max_groups_per_account),
            field("claim-burst", limits.claim_burst),
            field("claim-refill", limits.claim_refill),
            field("account-rate", limits.account_rate),
            field("account-burst", limits.account_burst),
            field("key-package-burst", limits.key_package_burst),
            field("key-package-refill", limits.key_package_refill),
            field("group-archive-bytes-per-day", limits.group_archive_bytes_per_day),
            field("account-archive-bytes-per-day", limits.account_archive_bytes_per_day),
        ]
        .into_iter()
        .chain(limits.external_sender.as_ref().map(|s| field(EXTERNAL_SENDER, super::b64_encode(s))))
        .collect(),
    );
    info(identity("component", "mls", Some("MLS Delivery Service")), SERVICE_FEATURES, vec![form])
}

pub fn directory_info() -> DiscoInfoResult {
    info(identity("pubsub", "pep", None), DIRECTORY_FEATURES, vec![])
}

/// disco#info on one of the directory's nodes.
pub fn node_info(node: &str) -> DiscoInfoResult {
    let mut i = info(identity("pubsub", "leaf", None), &[ns::DISCO_INFO], vec![]);
    i.node = Some(node.to_owned());
    i
}

/// The directory's two nodes.
pub fn directory_items(directory: Jid) -> DiscoItemsResult {
    let items = [devices::NODE, keypackages::NODE]
        .into_iter()
        .map(|node| Item { jid: directory.clone(), node: Some(node.to_owned()), name: None })
        .collect();
    DiscoItemsResult { node: None, items, rsm: None }
}

pub fn group_info() -> DiscoInfoResult {
    info(identity("conference", "mls", None), &[ns::DISCO_INFO, NS_MAM, NS_MAM_EXTENDED], vec![])
}

fn info(identity: Identity, features: &[&str], extensions: Vec<DataForm>) -> DiscoInfoResult {
    DiscoInfoResult {
        node: None,
        identities: vec![identity],
        features: features.iter().map(|f| f.to_string()).collect(),
        extensions,
    }
}

fn identity(category: &str, type_: &str, name: Option<&str>) -> Identity {
    Identity { category: category.into(), type_: type_.into(), lang: None, name: name.map(Into::into) }
}
