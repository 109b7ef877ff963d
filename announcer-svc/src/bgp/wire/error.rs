//! What is wrong with a received message, by the RFC's names, and the one place each defect
//! becomes the NOTIFICATION (code, subcode, data) the RFCs ask for.

use super::Notification;

/// NOTIFICATION error codes (RFC 4271 §4.5, RFC 4486 for Cease subcodes).
pub mod code {
    pub const HEADER: u8 = 1;
    pub const OPEN: u8 = 2;
    pub const UPDATE: u8 = 3;
    pub const HOLD_TIMER_EXPIRED: u8 = 4;
    pub const FSM: u8 = 5;
    pub const CEASE: u8 = 6;
    pub const ROUTE_REFRESH: u8 = 7;

    // Message Header Error subcodes.
    pub const CONNECTION_NOT_SYNCHRONIZED: u8 = 1;
    pub const BAD_MESSAGE_LENGTH: u8 = 2;
    pub const BAD_MESSAGE_TYPE: u8 = 3;
    // OPEN Message Error subcodes.
    pub const UNSUPPORTED_VERSION: u8 = 1;
    pub const BAD_PEER_AS: u8 = 2;
    pub const BAD_BGP_IDENTIFIER: u8 = 3;
    pub const UNSUPPORTED_OPTIONAL_PARAMETER: u8 = 4;
    pub const UNACCEPTABLE_HOLD_TIME: u8 = 6;
    // UPDATE Message Error subcodes.
    pub const MALFORMED_ATTRIBUTE_LIST: u8 = 1;
    pub const MISSING_WELL_KNOWN_ATTRIBUTE: u8 = 3;
    pub const ATTRIBUTE_FLAGS_ERROR: u8 = 4;
    pub const ATTRIBUTE_LENGTH_ERROR: u8 = 5;
    pub const INVALID_ORIGIN: u8 = 6;
    pub const INVALID_NETWORK_FIELD: u8 = 10;
    pub const MALFORMED_AS_PATH: u8 = 11;
    // Route-Refresh Message Error subcodes (RFC 7313).
    pub const INVALID_MESSAGE_LENGTH: u8 = 1;
    // Cease subcodes (RFC 4486).
    pub const ADMINISTRATIVE_SHUTDOWN: u8 = 2;
    pub const PEER_DECONFIGURED: u8 = 3;
    pub const OTHER_CONFIGURATION_CHANGE: u8 = 6;
}

/// A defect in a received message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// Message Header Error: the marker is not all ones.
    NotSynchronized,
    /// Message Header Error: the length field (data: the length).
    BadLength(u16),
    /// Message Header Error: the type (data: the type).
    BadType(u8),
    /// OPEN Message Error without a subcode of its own: a short or inconsistent OPEN.
    MalformedOpen,
    /// OPEN Message Error: not version 4 (data: the version this side speaks).
    UnsupportedVersion,
    /// OPEN Message Error: a parameter other than capabilities.
    UnsupportedOptionalParameter,
    /// UPDATE Message Error: the lengths of the attribute list disagree, or one is given twice.
    MalformedAttributeList,
    /// UPDATE Message Error: routes without a mandatory attribute (data: its type).
    MissingWellKnownAttribute(u8),
    /// UPDATE Message Error: an attribute's flags (data: the attribute, RFC 4271 §6.3).
    AttributeFlags(Vec<u8>),
    /// UPDATE Message Error: an attribute's length (data: the attribute).
    AttributeLength(Vec<u8>),
    /// UPDATE Message Error: ORIGIN other than IGP, EGP, INCOMPLETE (data: the attribute).
    InvalidOrigin(Vec<u8>),
    /// UPDATE Message Error: a prefix that does not fit its family.
    InvalidNetworkField,
    /// UPDATE Message Error: an AS_PATH segment's type or count.
    MalformedAsPath,
    /// ROUTE-REFRESH Message Error: its length (data: the message, RFC 7313).
    RouteRefreshLength(Vec<u8>),
}

impl DecodeError {
    /// The NOTIFICATION that answers this defect.
    pub fn notification(&self) -> Notification {
        use DecodeError as D;
        let (c, subcode, data): (u8, u8, Vec<u8>) = match self {
            D::NotSynchronized => (code::HEADER, code::CONNECTION_NOT_SYNCHRONIZED, vec![]),
            D::BadLength(len) => (
                code::HEADER,
                code::BAD_MESSAGE_LENGTH,
                len.to_be_bytes().to_vec(),
            ),
            D::BadType(t) => (code::HEADER, code::BAD_MESSAGE_TYPE, vec![*t]),
            D::MalformedOpen => (code::OPEN, 0, vec![]),
            D::UnsupportedVersion => (
                code::OPEN,
                code::UNSUPPORTED_VERSION,
                4u16.to_be_bytes().to_vec(),
            ),
            D::UnsupportedOptionalParameter => {
                (code::OPEN, code::UNSUPPORTED_OPTIONAL_PARAMETER, vec![])
            }
            D::MalformedAttributeList => (code::UPDATE, code::MALFORMED_ATTRIBUTE_LIST, vec![]),
            D::MissingWellKnownAttribute(t) => {
                (code::UPDATE, code::MISSING_WELL_KNOWN_ATTRIBUTE, vec![*t])
            }
            D::AttributeFlags(a) => (code::UPDATE, code::ATTRIBUTE_FLAGS_ERROR, a.clone()),
            D::AttributeLength(a) => (code::UPDATE, code::ATTRIBUTE_LENGTH_ERROR, a.clone()),
            D::InvalidOrigin(a) => (code::UPDATE, code::INVALID_ORIGIN, a.clone()),
            D::InvalidNetworkField => (code::UPDATE, code::INVALID_NETWORK_FIELD, vec![]),
            D::MalformedAsPath => (code::UPDATE, code::MALFORMED_AS_PATH, vec![]),
            D::RouteRefreshLength(m) => {
                (code::ROUTE_REFRESH, code::INVALID_MESSAGE_LENGTH, m.clone())
            }
        };
        Notification {
            code: c,
            subcode,
            data,
        }
    }

    /// Which message the defect is in, for the state machine's events: OPEN, UPDATE or other.
    pub fn message_type(&self) -> u8 {
        match self.notification().code {
            code::OPEN => 1,
            code::UPDATE => 2,
            _ => 0,
        }
    }
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.notification();
        write!(f, "{}", describe(n.code, n.subcode))
    }
}

/// The RFC names of a NOTIFICATION code and subcode.
pub fn describe(c: u8, sub: u8) -> String {
    let (name, subs): (&str, &[&str]) = match c {
        code::HEADER => (
            "message header error",
            &[
                "",
                "connection not synchronized",
                "bad message length",
                "bad message type",
            ],
        ),
        code::OPEN => (
            "OPEN message error",
            &[
                "",
                "unsupported version number",
                "bad peer AS",
                "bad BGP identifier",
                "unsupported optional parameter",
                "",
                "unacceptable hold time",
                "unsupported capability",
            ],
        ),
        code::UPDATE => (
            "UPDATE message error",
            &[
                "",
                "malformed attribute list",
                "unrecognized well-known attribute",
                "missing well-known attribute",
                "attribute flags error",
                "attribute length error",
                "invalid ORIGIN attribute",
                "",
                "invalid NEXT_HOP attribute",
                "optional attribute error",
                "invalid network field",
                "malformed AS_PATH",
            ],
        ),
        code::HOLD_TIMER_EXPIRED => ("hold timer expired", &[]),
        code::FSM => ("finite state machine error", &[]),
        code::CEASE => (
            "cease",
            &[
                "",
                "maximum number of prefixes reached",
                "administrative shutdown",
                "peer de-configured",
                "administrative reset",
                "connection rejected",
                "other configuration change",
                "connection collision resolution",
                "out of resources",
                "hard reset",
            ],
        ),
        code::ROUTE_REFRESH => (
            "ROUTE-REFRESH message error",
            &["", "invalid message length"],
        ),
        _ => ("unknown error code", &[]),
    };
    match subs.get(usize::from(sub)).filter(|s| !s.is_empty()) {
        Some(s) => format!("{name} ({c}): {s} ({sub})"),
        None => format!("{name} ({c}/{sub})"),
    }
}
