//! ICMP rules (`icmps`): type numbers or the names Cilium accepts, per family.

use serde::{Deserialize, Serialize};

/// `icmps` entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IcmpRule {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<IcmpField>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IcmpField {
    /// Defaults to IPv4.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub family: Option<IcmpFamily>,
    /// A type number 0..255 or a Cilium type name such as `EchoRequest`.
    #[serde(rename = "type")]
    pub icmp_type: IntOrString,
}

#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema,
)]
pub enum IcmpFamily {
    #[default]
    IPv4,
    IPv6,
}

/// Kubernetes `IntOrString`, kept as written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum IntOrString {
    Int(i64),
    String(String),
}

impl IcmpField {
    /// The family and type number, or why the type is not valid.
    pub fn resolve(&self) -> Result<(IcmpFamily, u8), String> {
        let family = self.family.unwrap_or_default();
        let n = match &self.icmp_type {
            IntOrString::Int(n) => *n,
            IntOrString::String(s) => match s.parse::<i64>() {
                Ok(n) => n,
                Err(_) => return icmp_type_by_name(family, s).map(|t| (family, t)),
            },
        };
        u8::try_from(n)
            .map(|t| (family, t))
            .map_err(|_| format!("ICMP type {n} out of range 0..255"))
    }
}

fn icmp_type_by_name(family: IcmpFamily, name: &str) -> Result<u8, String> {
    // The names Cilium accepts for each family.
    const V4: &[(&str, u8)] = &[
        ("EchoReply", 0),
        ("DestinationUnreachable", 3),
        ("Redirect", 5),
        ("Echo", 8),
        ("EchoRequest", 8),
        ("RouterAdvertisement", 9),
        ("RouterSelection", 10),
        ("TimeExceeded", 11),
        ("ParameterProblem", 12),
        ("Timestamp", 13),
        ("TimestampReply", 14),
        ("Photuris", 40),
        ("ExtendedEchoRequest", 42),
        ("ExtendedEchoReply", 43),
    ];
    const V6: &[(&str, u8)] = &[
        ("DestinationUnreachable", 1),
        ("PacketTooBig", 2),
        ("TimeExceeded", 3),
        ("ParameterProblem", 4),
        ("EchoRequest", 128),
        ("EchoReply", 129),
        ("MulticastListenerQuery", 130),
        ("MulticastListenerReport", 131),
        ("MulticastListenerDone", 132),
        ("RouterSolicitation", 133),
        ("RouterAdvertisement", 134),
        ("NeighborSolicitation", 135),
        ("NeighborAdvertisement", 136),
        ("RedirectMessage", 137),
        ("RouterRenumbering", 138),
        ("ICMPNodeInformationQuery", 139),
        ("ICMPNodeInformationResponse", 140),
        ("InverseNeighborDiscoverySolicitation", 141),
        ("InverseNeighborDiscoveryAdvertisement", 142),
        ("HomeAgentAddressDiscoveryRequest", 144),
        ("HomeAgentAddressDiscoveryReply", 145),
        ("MobilePrefixSolicitation", 146),
        ("MobilePrefixAdvertisement", 147),
        ("DuplicateAddressRequestCodeSuffix", 157),
        ("DuplicateAddressConfirmationCodeSuffix", 158),
        ("ExtendedEchoRequest", 160),
        ("ExtendedEchoReply", 161),
    ];
    let table = match family {
        IcmpFamily::IPv4 => V4,
        IcmpFamily::IPv6 => V6,
    };
    table
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, t)| *t)
        .ok_or_else(|| format!("unknown {family:?} ICMP type name {name:?}"))
}
