//! Notices to an account about its directory: pushed to the account's bare
//! JID as headline messages and kept in its inbox.

use minidom::Element;
use xmpp_parsers::jid::BareJid;

use super::{attr, malformed, n, ProtocolError, NS};

/// One of the account's KeyPackages was handed out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPackageClaimed {
    pub device: String,
    pub kp_ref: String,
    /// The claimer's bare JID.
    pub by: BareJid,
    /// Ordinary (not last-resort) KeyPackages the device has left.
    pub remaining: u32,
    pub last_resort: bool,
}

/// A device's pool fell to the low-water mark: time to upload more.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPackagesLow {
    pub device: String,
    pub remaining: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    KeyPackageClaimed(KeyPackageClaimed),
    KeyPackagesLow(KeyPackagesLow),
}

impl Notice {
    pub fn to_element(&self) -> Element {
        match self {
            Notice::KeyPackageClaimed(c) => Element::builder("key-package-claimed", NS)
                .attr(n("device"), c.device.as_str())
                .attr(n("ref"), c.kp_ref.as_str())
                .attr(n("by"), c.by.as_str())
                .attr(n("remaining"), c.remaining.to_string())
                .attr(n("last-resort"), if c.last_resort { "true" } else { "false" })
                .build(),
            Notice::KeyPackagesLow(l) => Element::builder("key-packages-low", NS)
                .attr(n("device"), l.device.as_str())
                .attr(n("remaining"), l.remaining.to_string())
                .build(),
        }
    }

    /// Finds a notice among a message's children.
    pub fn find(message: &Element) -> Option<Result<Self, ProtocolError>> {
        message.children().filter(|c| c.ns() == NS).find_map(|c| match c.name() {
            "key-package-claimed" | "key-packages-low" => Some(Self::parse(c)),
            _ => None,
        })
    }

    fn parse(el: &Element) -> Result<Self, ProtocolError> {
        let device = attr(el, "device", "notice without device")?.to_owned();
        let remaining =
            attr(el, "remaining", "notice without remaining")?.parse().map_err(|_| malformed("bad remaining"))?;
        Ok(match el.name() {
            "key-package-claimed" => Notice::KeyPackageClaimed(KeyPackageClaimed {
                device,
                kp_ref: attr(el, "ref", "notice without ref")?.to_owned(),
                by: BareJid::new(attr(el, "by", "notice without by")?).map_err(|_| malformed("bad by"))?,
                remaining,
                last_resort: el.attr("last-resort") == Some("true"),
            }),
            _ => Notice::KeyPackagesLow(KeyPackagesLow { device, remaining }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices_round_trip() {
        let claimed = Notice::KeyPackageClaimed(KeyPackageClaimed {
            device: "laptop".into(),
            kp_ref: "ab".into(),
            by: BareJid::new("bob@example.org").unwrap(),
            remaining: 4,
            last_resort: false,
        });
        let low = Notice::KeyPackagesLow(KeyPackagesLow { device: "laptop".into(), remaining: 4 });
        for notice in [claimed, low] {
            let msg = Element::builder("message", "jabber:client").append(notice.to_element()).build();
            assert_eq!(Notice::find(&msg).unwrap().unwrap(), notice);
        }
    }
}
