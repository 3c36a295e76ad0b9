//! Service discovery (XEP-0030) answers and the XEP-0128 limits form
//! (xep/ §Discovering the service).

use xmpp_parsers::data_forms::{DataForm, DataFormType, Field, FieldType};
use xmpp_parsers::disco::{DiscoInfoResult, Identity};
use xmpp_parsers::ns;

use super::NS;

pub const PING: &str = "urn:xmpp:ping";

/// Features of the service JID: exactly what is implemented.
pub const SERVICE_FEATURES: &[&str] = &[ns::DISCO_INFO, ns::DISCO_ITEMS, NS, PING];
/// Features of an account's directory JID.
pub const DIRECTORY_FEATURES: &[&str] = &[ns::DISCO_INFO, ns::DISCO_ITEMS];

/// Limits announced in the XEP-0128 form (FORM_TYPE `urn:xmpp:mls:0`).
pub struct AnnouncedLimits {
    pub max_payload_size: usize,
}

pub fn service_info(limits: &AnnouncedLimits) -> DiscoInfoResult {
    let form = DataForm::new(
        DataFormType::Result_,
        NS,
        vec![Field::new("max-payload-size", FieldType::TextSingle)
            .with_value(&limits.max_payload_size.to_string())],
    );
    DiscoInfoResult {
        node: None,
        identities: vec![identity("component", "mls", Some("MLS Delivery Service"))],
        features: SERVICE_FEATURES.iter().map(|f| f.to_string()).collect(),
        extensions: vec![form],
    }
}

pub fn directory_info() -> DiscoInfoResult {
    DiscoInfoResult {
        node: None,
        identities: vec![identity("pubsub", "pep", None)],
        features: DIRECTORY_FEATURES.iter().map(|f| f.to_string()).collect(),
        extensions: vec![],
    }
}

pub fn group_info() -> DiscoInfoResult {
    DiscoInfoResult {
        node: None,
        identities: vec![identity("conference", "mls", None)],
        features: [ns::DISCO_INFO.to_owned()].into(),
        extensions: vec![],
    }
}

fn identity(category: &str, type_: &str, name: Option<&str>) -> Identity {
    Identity { category: category.into(), type_: type_.into(), lang: None, name: name.map(Into::into) }
}
