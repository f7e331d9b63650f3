//! The quota guard: what stands between a caller's report that a credential was rejected and a
//! fetch from WeChat. See `docs/ARCHITECTURE.md` ("The quota guard").

use std::fmt;
use std::net::IpAddr;

/// Who reported a credential as rejected: named in the log line a report WeChat contradicts
/// leaves, and the unit of the stable-token share.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Reporter {
    /// A caller that presented this consumer key (its name).
    Key(String),
    /// A caller admitted by its address, while no consumer keys exist.
    Address(IpAddr),
    /// Code in this process that embeds the engine.
    Embedded,
}

impl fmt::Display for Reporter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reporter::Key(name) => write!(f, "key {name}"),
            Reporter::Address(ip) => write!(f, "address {ip}"),
            Reporter::Embedded => f.write_str("embedded caller"),
        }
    }
}

impl Reporter {
    /// How it is stored in `wetoken_refresh_share.reporter`.
    #[allow(dead_code)] // the stable-token share uses it
    pub(crate) fn share_id(&self) -> String {
        match self {
            Reporter::Key(name) => format!("key:{name}"),
            Reporter::Address(ip) => format!("addr:{ip}"),
            Reporter::Embedded => "embedded".to_owned(),
        }
    }
}
