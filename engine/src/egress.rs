//! The egress guard for every user-given URL (webhooks, media links from upstreams): keeps
//! requests off private and special-purpose networks.
//!
//! Two layers work together, and both are required:
//!
//! 1. [`check_url`] runs when a webhook URL is submitted **and again right before every delivery**.
//!    It rejects non-HTTP schemes, credentials in the URL, oversized URLs and IP-literal hosts in a
//!    blocked range. Re-running it at delivery time is not optional: reqwest (through hyper-util's
//!    connector) dials IP-literal hosts such as `http://127.0.0.1/` or `http://[::1]/` directly,
//!    **without ever calling the DNS resolver**, so [`GuardedResolver`] never sees them. A URL stored
//!    before the blocked ranges or the allow list changed must also be judged by today's rules.
//! 2. [`GuardedResolver`], installed by [`delivery_client`], resolves host names and hands reqwest only
//!    the addresses that pass the guard. Because the addresses reqwest dials are exactly the ones that
//!    were checked, a DNS answer that changes between submission and delivery (DNS rebinding) cannot
//!    smuggle a private address through.
//!
//! [`delivery_client`] also never follows redirects (a public endpoint could otherwise redirect to
//! `http://169.254.169.254/`) and ignores proxy settings from the environment (a proxy would do the
//! resolving and connecting itself, outside the guard).
//!
//! The operator can open specific private ranges with [`AllowList`] (from
//! `MEDIAGATE_WEBHOOK_ALLOW_CIDRS`), e.g. to deliver to services on the same private network.
//! For addresses that embed an IPv4 address (IPv4-mapped, IPv4-compatible, NAT64 `64:ff9b::/96`,
//! 6to4), an allow-list entry is matched against the embedded IPv4 address too: such an address is
//! blocked *because of* its IPv4 part, so allowing `127.0.0.0/8` also allows `::ffff:127.0.0.1` and
//! `2002:7f00:1::`. Without this, operators would have to list every IPv6 spelling of each range.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// Name of the environment variable the allow list is read from.
pub const ALLOW_CIDRS_ENV: &str = "MEDIAGATE_WEBHOOK_ALLOW_CIDRS";

/// Longest webhook URL accepted, in bytes.
pub const MAX_URL_LEN: usize = 2048;

/// Why a webhook URL, address or allow list was refused.
#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    #[error("invalid entry {entry:?} in the webhook allow list: {reason}")]
    AllowListEntry { entry: String, reason: String },
    #[error("invalid URL: {0}")]
    InvalidUrl(#[from] url::ParseError),
    #[error("URL scheme {0:?} is not allowed; use http or https")]
    Scheme(String),
    #[error("URL must not contain a user name or password")]
    Userinfo,
    #[error("URL is {len} bytes long; at most {max} bytes are allowed")]
    TooLong { len: usize, max: usize },
    #[error("URL has no host")]
    MissingHost,
    #[error("address {ip} is not allowed: {reason}")]
    Blocked { ip: IpAddr, reason: &'static str },
    #[error("{host} always names this machine (loopback), which is not allowed")]
    LocalName { host: String },
    // The I/O error goes into the message rather than `source()` so that logs which print only the
    // top-level message still say why the lookup failed.
    #[error("could not resolve {host}: {error}")]
    Lookup { host: String, error: std::io::Error },
    #[error("{host} resolved to no addresses")]
    NoAddresses { host: String },
    #[error("{host} resolves only to addresses that are not allowed: {}", describe_blocked(.blocked))]
    AllBlocked {
        host: String,
        blocked: Vec<(IpAddr, &'static str)>,
    },
}

fn describe_blocked(blocked: &[(IpAddr, &'static str)]) -> String {
    blocked
        .iter()
        .map(|(ip, reason)| format!("{ip} ({reason})"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl GuardError {
    /// Whether the URL can never be delivered to under these rules (as opposed to a name
    /// that could not be resolved just now): such a delivery fails at once, not retried.
    pub fn is_permanent(&self) -> bool {
        !matches!(
            self,
            GuardError::Lookup { .. } | GuardError::NoAddresses { .. }
        )
    }

    /// Whether the operator's allow list could open what was refused.
    pub fn is_private_address(&self) -> bool {
        matches!(
            self,
            GuardError::Blocked { .. }
                | GuardError::LocalName { .. }
                | GuardError::AllBlocked { .. }
        )
    }
}

/// Finds the [`GuardError`] behind an error, e.g. inside a `reqwest::Error` from [`delivery_client`],
/// so that a delivery refused by the guard can be told apart from a network failure (and not retried).
pub fn find_guard_error<'a>(
    mut err: &'a (dyn std::error::Error + 'static),
) -> Option<&'a GuardError> {
    loop {
        if let Some(guard) = err.downcast_ref::<GuardError>() {
            return Some(guard);
        }
        err = err.source()?;
    }
}

/// One allow-list entry, parsed strictly: `addr` or `addr/len`, canonical addresses,
/// digits-only prefix length, and no host bits.
fn parse_entry(entry: &str) -> Result<IpNet, GuardError> {
    let bad = |reason: String| GuardError::AllowListEntry {
        entry: entry.to_owned(),
        reason,
    };
    let (addr, len) = match entry.split_once('/') {
        Some((addr, len)) => (addr, Some(len)),
        None => (entry, None),
    };
    // std's parser accepts only canonical dotted-decimal IPv4, so an entry cannot use the odd
    // spellings ("0x7f.1", "127.1") that would make the configuration hard to read.
    let addr: IpAddr = addr
        .parse()
        .map_err(|_| bad(format!("{addr:?} is not an IP address")))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let len = match len {
        None => max,
        // Digits only: u8's parser would also take "+8".
        Some(len) => match len.parse::<u8>() {
            Ok(n) if n <= max && len.bytes().all(|b| b.is_ascii_digit()) => n,
            _ => return Err(bad(format!("prefix length must be 0 to {max}"))),
        },
    };
    let net = IpNet::new(addr, len).map_err(|e| bad(e.to_string()))?;
    // A stray host bit ("10.0.0.1/8") usually means a typo in the prefix; refusing it beats
    // silently opening a different range than the operator had in mind.
    if net.trunc() != net {
        return Err(bad(format!(
            "host bits are set; did you mean {}?",
            net.trunc()
        )));
    }
    Ok(net)
}

/// CIDR allow list from `MEDIAGATE_WEBHOOK_ALLOW_CIDRS`, e.g. `"127.0.0.0/8, 10.0.0.0/8, ::1/128"`.
/// Empty = nothing private allowed.
///
/// Entries are separated by commas and/or whitespace; a bare address counts as `/32` or `/128`.
/// An entry may open any range, including `0.0.0.0/0`: the list is operator configuration, so it is
/// trusted as written.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AllowList {
    cidrs: Vec<IpNet>,
}

impl AllowList {
    /// Parses a comma- or whitespace-separated list of CIDR ranges or bare addresses.
    pub fn parse(s: &str) -> Result<AllowList, GuardError> {
        let cidrs = s
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|entry| !entry.is_empty())
            .map(parse_entry)
            .collect::<Result<_, _>>()?;
        Ok(AllowList { cidrs })
    }

    /// Whether `ip` lies in an allowed range, either as given or, for the forms that embed an IPv4
    /// address, through that embedded address.
    pub fn allows(&self, ip: IpAddr) -> bool {
        let embedded = match ip {
            IpAddr::V6(v6) => embedded_ipv4(v6).map(IpAddr::V4),
            IpAddr::V4(_) => None,
        };
        self.cidrs
            .iter()
            .any(|cidr| cidr.contains(&ip) || embedded.is_some_and(|v4| cidr.contains(&v4)))
    }

    /// True when no private range is open.
    pub fn is_empty(&self) -> bool {
        self.cidrs.is_empty()
    }
}

impl fmt::Display for AllowList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, cidr) in self.cidrs.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{cidr}")?;
        }
        Ok(())
    }
}

/// Why an address may not be dialled, or None if it is a public unicast address.
pub fn blocked_reason(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => blocked_reason_v4(v4),
        IpAddr::V6(v6) => blocked_reason_v6(v6),
    }
}

fn blocked_reason_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    // Broadcast comes before the reserved 240.0.0.0/4 that contains it, for the more precise reason.
    let reason = if a == 0 {
        "\"this network\" (0.0.0.0/8)"
    } else if ip.is_loopback() {
        "loopback (127.0.0.0/8)"
    } else if ip.is_private() {
        "private network (10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16)"
    } else if a == 100 && (b & 0xc0) == 64 {
        "carrier-grade NAT (100.64.0.0/10)"
    } else if ip.is_link_local() {
        "link-local, including cloud metadata endpoints (169.254.0.0/16)"
    } else if a == 192 && b == 0 && c == 0 {
        "IETF protocol assignments (192.0.0.0/24)"
    } else if ip.is_documentation() {
        "documentation (192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24)"
    } else if a == 198 && (b & 0xfe) == 18 {
        "benchmarking (198.18.0.0/15)"
    } else if ip.is_multicast() {
        "multicast (224.0.0.0/4)"
    } else if ip.is_broadcast() {
        "broadcast (255.255.255.255)"
    } else if a >= 240 {
        "reserved (240.0.0.0/4)"
    } else {
        return None;
    };
    Some(reason)
}

/// The IPv4 address carried by the IPv6 forms whose reachability is that of their IPv4 part:
/// IPv4-mapped `::ffff:0:0/96`, IPv4-compatible `::/96` (except `::` and `::1`, which mean
/// themselves), NAT64 `64:ff9b::/96`, and 6to4 `2002::/16` (bits 16–48).
fn embedded_ipv4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let low32 = || Ipv4Addr::from((u32::from(s[6]) << 16) | u32::from(s[7]));
    if let Some(v4) = ip.to_ipv4_mapped() {
        Some(v4)
    } else if s[..6] == [0; 6] {
        (!ip.is_unspecified() && !ip.is_loopback()).then(low32)
    } else if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        Some(low32())
    } else if s[0] == 0x2002 {
        Some(Ipv4Addr::from((u32::from(s[1]) << 16) | u32::from(s[2])))
    } else {
        None
    }
}

fn blocked_reason_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    if ip.is_unspecified() {
        return Some("unspecified address (::/128)");
    }
    if ip.is_loopback() {
        return Some("loopback (::1/128)");
    }
    // Dialling these reaches (or is routed towards) the embedded IPv4 address, so they are exactly
    // as dangerous as that address: ::ffff:127.0.0.1 is 127.0.0.1 on a dual-stack socket.
    if let Some(v4) = embedded_ipv4(ip) {
        return blocked_reason_v4(v4);
    }
    let reason = if s[..3] == [0x64, 0xff9b, 1] {
        // RFC 8215: for translators inside one network, so the embedded IPv4 may be a private one
        // under any local mapping; nothing public lives there.
        "NAT64 local use (64:ff9b:1::/48)"
    } else if ip.is_unique_local() {
        "unique local (fc00::/7)"
    } else if ip.is_unicast_link_local() {
        "link-local (fe80::/10)"
    } else if (s[0] & 0xffc0) == 0xfec0 {
        "site-local, deprecated (fec0::/10)"
    } else if ip.is_multicast() {
        "multicast (ff00::/8)"
    } else if s[0] == 0x2001 && s[1] == 0x0db8 {
        "documentation (2001:db8::/32)"
    } else if s[..4] == [0x100, 0, 0, 0] {
        "discard-only (100::/64)"
    } else if s[0] == 0x2001 && s[1] < 0x0200 {
        // Includes Teredo (2001::/32), whose addresses encode an obfuscated IPv4 server and client:
        // traffic goes through whichever relay the host's routing picks, and the real destination
        // cannot be judged from the address alone, so the tunnel would be a way around the guard.
        "IETF protocol assignments, including Teredo (2001::/23)"
    } else if (s[0] & 0xe000) != 0x2000 {
        // Everything outside 2000::/3 that is not handled above (the rest of ::/8, 4000::/2, ...)
        // is unallocated or special-purpose; no public host can be reached there.
        "not global unicast (outside 2000::/3)"
    } else {
        return None;
    };
    Some(reason)
}

/// Whether `ip` may be dialled under `allow`; the error names the blocked range.
fn check_ip(ip: IpAddr, allow: &AllowList) -> Result<(), GuardError> {
    match blocked_reason(ip) {
        Some(reason) if !allow.allows(ip) => Err(GuardError::Blocked { ip, reason }),
        _ => Ok(()),
    }
}

/// Checks done when a webhook URL is submitted (no DNS): http/https only; no userinfo; at most
/// 2048 bytes; a host present; an IP-literal host (v4, v6 in brackets, and odd v4 spellings that URL
/// parsers normalise such as `0x7f.1`, `2130706433`, `127.1`) in a blocked range and not allowed →
/// error with the reason. Returns the parsed [`url::Url`].
///
/// Must be applied again at delivery time: see the module documentation.
pub fn check_url(url: &str, allow: &AllowList) -> Result<url::Url, GuardError> {
    // Checked before parsing so that a huge input costs nothing, and after, because IDNA and
    // percent-encoding can make the normalised URL longer than what was submitted.
    if url.len() > MAX_URL_LEN {
        return Err(GuardError::TooLong {
            len: url.len(),
            max: MAX_URL_LEN,
        });
    }
    let parsed = url::Url::parse(url)?;
    if parsed.as_str().len() > MAX_URL_LEN {
        return Err(GuardError::TooLong {
            len: parsed.as_str().len(),
            max: MAX_URL_LEN,
        });
    }
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(GuardError::Scheme(parsed.scheme().to_owned()));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(GuardError::Userinfo);
    }
    // The url crate follows the WHATWG host parser, so every IPv4 spelling a browser or resolver
    // would accept ("0x7f.1", "017700000001", "127.1") already arrives here as Host::Ipv4, in the
    // same form reqwest will dial.
    match parsed.host() {
        None => return Err(GuardError::MissingHost),
        Some(url::Host::Domain("")) => return Err(GuardError::MissingHost),
        // `localhost` and its subdomains are loopback by definition (RFC 6761), so they
        // are judged without asking a resolver, like 127.0.0.1.
        Some(url::Host::Domain(name)) if is_localhost(name) => {
            if !allow.allows(IpAddr::V4(Ipv4Addr::LOCALHOST))
                && !allow.allows(IpAddr::V6(Ipv6Addr::LOCALHOST))
            {
                return Err(GuardError::LocalName {
                    host: name.to_owned(),
                });
            }
        }
        Some(url::Host::Domain(_)) => {}
        Some(url::Host::Ipv4(ip)) => check_ip(IpAddr::V4(ip), allow)?,
        Some(url::Host::Ipv6(ip)) => check_ip(IpAddr::V6(ip), allow)?,
    }
    Ok(parsed)
}

/// `localhost`, `localhost.` and any name under `.localhost`.
fn is_localhost(name: &str) -> bool {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name == "localhost" || name.ends_with(".localhost")
}

/// What can be judged of a URL's host name when it is submitted: the addresses it
/// resolves to now, looked up for at most `timeout`. Refused only if every address is
/// blocked; a name that does not resolve in time (or at all) is left to delivery, which
/// judges the addresses again at every attempt (DNS answers change).
pub async fn check_resolved(
    url: &url::Url,
    allow: &AllowList,
    timeout: Duration,
) -> Result<(), GuardError> {
    let Some(url::Host::Domain(host)) = url.host() else {
        return Ok(());
    };
    let lookup = tokio::net::lookup_host((host, 0));
    let Ok(Ok(addrs)) = tokio::time::timeout(timeout, lookup).await else {
        return Ok(());
    };
    match filter_addrs(host, addrs, allow) {
        Err(e @ GuardError::AllBlocked { .. }) => Err(e),
        _ => Ok(()),
    }
}

/// Keeps the addresses of `host` that may be dialled under `allow`, or explains why none may.
fn filter_addrs(
    host: &str,
    addrs: impl IntoIterator<Item = SocketAddr>,
    allow: &AllowList,
) -> Result<Vec<SocketAddr>, GuardError> {
    let mut kept = Vec::new();
    let mut blocked = Vec::new();
    for addr in addrs {
        match check_ip(addr.ip(), allow) {
            Ok(()) => kept.push(addr),
            Err(GuardError::Blocked { ip, reason }) => blocked.push((ip, reason)),
            Err(other) => return Err(other),
        }
    }
    if !kept.is_empty() {
        Ok(kept)
    } else if blocked.is_empty() {
        Err(GuardError::NoAddresses {
            host: host.to_owned(),
        })
    } else {
        Err(GuardError::AllBlocked {
            host: host.to_owned(),
            blocked,
        })
    }
}

/// A reqwest DNS resolver that resolves with the system resolver, drops every address that is
/// blocked and not allowed, and fails the lookup with the reasons if none survive.
///
/// Plug in with `reqwest::ClientBuilder::dns_resolver(Arc<GuardedResolver>)`, or use
/// [`delivery_client`]. Because reqwest then dials only the surviving addresses, DNS rebinding cannot
/// slip through between check and connect.
///
/// It uses `tokio::net::lookup_host` (getaddrinfo on the blocking pool) rather than hickory so that
/// webhook hosts resolve exactly as everything else on the machine does — `/etc/hosts`, nsswitch, the
/// container runtime's DNS, search domains — and without an extra dependency. Every address it
/// returns is checked, so where it comes from does not matter for safety.
#[derive(Clone, Debug, Default)]
pub struct GuardedResolver {
    allow: Arc<AllowList>,
}

impl GuardedResolver {
    pub fn new(allow: AllowList) -> Self {
        GuardedResolver {
            allow: Arc::new(allow),
        }
    }
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow = Arc::clone(&self.allow);
        let host = name.as_str().to_owned();
        Box::pin(async move {
            // Port 0: reqwest puts in the URL's port (or the scheme's default) before connecting.
            let addrs = tokio::net::lookup_host((host.as_str(), 0))
                .await
                .map_err(|error| GuardError::Lookup {
                    host: host.clone(),
                    error,
                })?;
            let kept = filter_addrs(&host, addrs, &allow)?;
            Ok(Box::new(kept.into_iter()) as Addrs)
        })
    }
}

/// The HTTP client for deliveries: the guarded resolver, no proxy from the environment, redirects
/// never followed, the given total timeout, TCP_NODELAY.
///
/// It does not protect IP-literal URLs on its own: pass every URL through [`check_url`] before
/// sending (see the module documentation).
pub fn delivery_client(allow: AllowList, timeout: Duration) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .dns_resolver(Arc::new(GuardedResolver::new(allow)))
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(timeout)
        .tcp_nodelay(true)
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    fn ip(s: &str) -> IpAddr {
        s.trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .unwrap_or_else(|_| panic!("bad test address {s}"))
    }

    fn allow(s: &str) -> AllowList {
        AllowList::parse(s).expect("valid allow list")
    }

    #[test]
    fn blocked_and_public_addresses() {
        let blocked = [
            "127.0.0.1",
            "169.254.169.254",
            "[::1]",
            "::ffff:127.0.0.1",
            "::ffff:7f00:1",
            "0.0.0.0",
            "0.1.2.3",
            "100.64.0.1",
            "100.127.255.255",
            "fd00::1",
            "fc00::1",
            "fe80::1",
            "fec0::1",
            "64:ff9b::7f00:1",
            "64:ff9b::a00:1",
            "64:ff9b:1::808:808",
            "2002:7f00:1::",
            "2002:a9fe:a9fe::1",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "192.0.0.8",
            "192.0.2.1",
            "198.51.100.1",
            "203.0.113.1",
            "224.0.0.1",
            "239.255.255.250",
            "240.0.0.1",
            "255.255.255.255",
            "198.18.0.1",
            "198.19.255.255",
            "2001:db8::1",
            "::",
            "::127.0.0.1",
            "::ffff:169.254.169.254",
            "::ffff:0:7f00:1",
            "100::1",
            "2001::1",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
            "2001:1ff::1",
            "ff02::1",
            "4000::1",
        ];
        for addr in blocked {
            assert!(
                blocked_reason(ip(addr)).is_some(),
                "{addr} should be blocked"
            );
        }
        let public = [
            "93.184.215.14",
            "8.8.8.8",
            "1.1.1.1",
            "100.63.255.255",
            "100.128.0.0",
            "172.32.0.1",
            "198.17.255.255",
            "198.20.0.0",
            "223.255.255.255",
            "2606:4700:4700::1111",
            "64:ff9b::808:808",
            "::ffff:8.8.8.8",
            "2002:808:808::1",
            "2001:200::1",
            "2001:4860:4860::8888",
        ];
        for addr in public {
            assert_eq!(blocked_reason(ip(addr)), None, "{addr} should be allowed");
        }
    }

    #[test]
    fn embedded_ipv4_is_judged_by_its_ipv4_reason() {
        assert_eq!(
            blocked_reason(ip("::ffff:127.0.0.1")),
            blocked_reason(ip("127.0.0.1"))
        );
        assert_eq!(
            blocked_reason(ip("2002:a9fe:a9fe::")),
            blocked_reason(ip("169.254.169.254"))
        );
        assert_eq!(
            blocked_reason(ip("64:ff9b::a00:1")),
            blocked_reason(ip("10.0.0.1"))
        );
    }

    #[test]
    fn allow_list_parses_good_input() {
        let list = allow(" 127.0.0.0/8, 10.0.0.0/8,::1/128  192.168.1.10 fd00::/8,");
        assert_eq!(
            list.to_string(),
            "127.0.0.0/8, 10.0.0.0/8, ::1/128, 192.168.1.10/32, fd00::/8"
        );
        assert!(allow("").is_empty());
        assert!(allow(" , ").is_empty());
        assert!(allow("0.0.0.0/0").allows(ip("10.9.8.7")));
        assert!(allow("::/0").allows(ip("fe80::1")));
        assert!(allow("2001:db8::").allows(ip("2001:db8::")));
        assert!(!allow("2001:db8::").allows(ip("2001:db8::1")));
    }

    #[test]
    fn allow_list_rejects_bad_input() {
        for bad in [
            "127.0.0.0/33",
            "::/129",
            "10.0.0.0/",
            "10.0.0.0/-1",
            "10.0.0.0/+8",
            "10.0.0.0/8/8",
            "10.0.0.1/8",
            "fd00::1/8",
            "localhost",
            "0x7f.1",
            "127.1",
            "10.0.0.0/8; 127.0.0.0/8",
            "fe80::1%eth0",
            "[::1]",
        ] {
            match AllowList::parse(bad) {
                Err(GuardError::AllowListEntry { .. }) => {}
                other => panic!("{bad:?} should be rejected, got {other:?}"),
            }
        }
        let err = AllowList::parse("10.0.0.1/8").unwrap_err().to_string();
        assert!(err.contains("10.0.0.0/8"), "{err}");
    }

    #[test]
    fn allow_list_opens_only_its_ranges() {
        let list = allow("127.0.0.0/8");
        assert!(list.allows(ip("127.0.0.1")));
        assert!(!list.allows(ip("10.0.0.1")));
        assert!(check_ip(ip("127.0.0.1"), &list).is_ok());
        assert!(check_ip(ip("10.0.0.1"), &list).is_err());
        assert!(check_ip(ip("::1"), &list).is_err());
        assert!(check_ip(ip("169.254.169.254"), &list).is_err());
    }

    #[test]
    fn allow_list_covers_embedded_ipv4_forms() {
        let list = allow("127.0.0.0/8");
        for addr in [
            "::ffff:127.0.0.1",
            "64:ff9b::7f00:1",
            "2002:7f00:1::",
            "::127.0.0.1",
        ] {
            assert!(check_ip(ip(addr), &list).is_ok(), "{addr}");
        }
        assert!(check_ip(ip("::ffff:10.0.0.1"), &list).is_err());
        // `::` and `::1` stand for themselves, not for 0.0.0.0 and 0.0.0.1.
        assert!(check_ip(ip("::1"), &allow("0.0.0.0/8")).is_err());
        assert!(check_ip(ip("::1"), &allow("::1")).is_ok());
    }

    #[test]
    fn check_url_rejects_unsafe_urls() {
        let none = AllowList::default();
        type Expect = fn(&GuardError) -> bool;
        let cases: &[(&str, Expect)] = &[
            (
                "ftp://example.com/file",
                |e| matches!(e, GuardError::Scheme(s) if s == "ftp"),
            ),
            ("file:///etc/passwd", |e| matches!(e, GuardError::Scheme(_))),
            ("gopher://example.com/", |e| {
                matches!(e, GuardError::Scheme(_))
            }),
            ("https://user:pass@example.com/hook", |e| {
                matches!(e, GuardError::Userinfo)
            }),
            ("https://user@example.com/hook", |e| {
                matches!(e, GuardError::Userinfo)
            }),
            ("not a url", |e| matches!(e, GuardError::InvalidUrl(_))),
            ("http://", |e| matches!(e, GuardError::InvalidUrl(_))),
            (
                "http://127.0.0.1/",
                |e| matches!(e, GuardError::Blocked { reason, .. } if reason.contains("loopback")),
            ),
            (
                "http://[::1]/",
                |e| matches!(e, GuardError::Blocked { reason, .. } if reason.contains("loopback")),
            ),
            ("http://[::ffff:127.0.0.1]:8080/", |e| {
                matches!(e, GuardError::Blocked { .. })
            }),
            ("http://0x7f.1/", |e| {
                matches!(e, GuardError::Blocked { .. })
            }),
            ("http://2130706433/", |e| {
                matches!(e, GuardError::Blocked { .. })
            }),
            ("http://127.1/", |e| matches!(e, GuardError::Blocked { .. })),
            ("http://0177.0.0.1/", |e| {
                matches!(e, GuardError::Blocked { .. })
            }),
            ("http://0/", |e| matches!(e, GuardError::Blocked { .. })),
            (
                "http://169.254.169.254/latest/meta-data",
                |e| matches!(e, GuardError::Blocked { reason, .. } if reason.contains("metadata")),
            ),
            ("https://10.0.0.5:8443/hook", |e| {
                matches!(e, GuardError::Blocked { .. })
            }),
        ];
        for (url, expected) in cases {
            match check_url(url, &none) {
                Err(err) => assert!(expected(&err), "{url}: unexpected error {err:?}"),
                Ok(parsed) => panic!("{url} should be rejected, got {parsed}"),
            }
        }

        let long = format!("https://example.com/{}", "a".repeat(MAX_URL_LEN));
        assert!(matches!(
            check_url(&long, &none),
            Err(GuardError::TooLong { .. })
        ));
        let err = check_url("http://169.254.169.254/latest/meta-data", &none)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("169.254.169.254") && err.contains("link-local"),
            "{err}"
        );
    }

    #[test]
    fn check_url_accepts_public_and_allowed_urls() {
        let none = AllowList::default();
        let url = check_url("https://example.com/hook", &none).expect("accepted");
        assert_eq!(url.host_str(), Some("example.com"));
        assert!(check_url("http://8.8.8.8:8080/x?y=1", &none).is_ok());
        assert!(check_url("https://[2606:4700:4700::1111]/hook", &none).is_ok());
        // Names are not resolved here; the resolver judges them at delivery. `localhost`
        // is loopback by definition, so it is judged like 127.0.0.1.
        assert!(check_url("http://hooks.example.com/hook", &none).is_ok());
        for local in [
            "http://localhost:9000/hook",
            "http://LocalHost./h",
            "http://a.localhost/h",
        ] {
            let err = check_url(local, &none).unwrap_err();
            assert!(
                matches!(err, GuardError::LocalName { .. })
                    && err.is_permanent()
                    && err.is_private_address(),
                "{local}: {err:?}"
            );
        }
        assert!(check_url("http://localhost:9000/hook", &allow("127.0.0.0/8")).is_ok());
        assert!(check_url("http://localhost:9000/hook", &allow("::1")).is_ok());

        let exact = format!("https://example.com/{}", "a".repeat(MAX_URL_LEN - 20));
        assert_eq!(exact.len(), MAX_URL_LEN);
        assert!(check_url(&exact, &none).is_ok());

        let loopback = allow("127.0.0.0/8");
        assert!(check_url("http://127.0.0.1:9000/hook", &loopback).is_ok());
        assert!(check_url("http://0x7f.1/", &loopback).is_ok());
        assert!(check_url("http://[::1]/", &loopback).is_err());
        assert!(check_url("http://10.0.0.1/", &loopback).is_err());
    }

    #[test]
    fn filter_keeps_only_permitted_addresses() {
        let sock = |s: &str| SocketAddr::new(ip(s), 443);
        let mixed = [
            sock("10.0.0.7"),
            sock("93.184.215.14"),
            sock("::1"),
            sock("2606:4700:4700::1111"),
            sock("169.254.169.254"),
            sock("::ffff:192.168.0.1"),
        ];
        let kept = filter_addrs("mixed.example", mixed, &AllowList::default()).unwrap();
        assert_eq!(
            kept,
            vec![sock("93.184.215.14"), sock("2606:4700:4700::1111")]
        );

        let kept = filter_addrs("mixed.example", mixed, &allow("10.0.0.0/8")).unwrap();
        assert_eq!(
            kept,
            vec![
                sock("10.0.0.7"),
                sock("93.184.215.14"),
                sock("2606:4700:4700::1111")
            ]
        );

        let err = filter_addrs(
            "rebind.example",
            [sock("127.0.0.1"), sock("169.254.169.254")],
            &AllowList::default(),
        )
        .unwrap_err();
        assert!(matches!(&err, GuardError::AllBlocked { blocked, .. } if blocked.len() == 2));
        let msg = err.to_string();
        assert!(
            msg.contains("rebind.example")
                && msg.contains("loopback")
                && msg.contains("link-local"),
            "{msg}"
        );

        assert!(matches!(
            filter_addrs("empty.example", [], &AllowList::default()),
            Err(GuardError::NoAddresses { .. })
        ));
    }

    async fn resolve(
        resolver: &GuardedResolver,
        host: &str,
    ) -> Result<Vec<SocketAddr>, Box<dyn std::error::Error + Send + Sync>> {
        let name: Name = host.parse().expect("valid name");
        Ok(resolver.resolve(name).await?.collect())
    }

    #[tokio::test]
    async fn resolver_blocks_localhost_unless_allowed() {
        let err = resolve(&GuardedResolver::new(AllowList::default()), "localhost")
            .await
            .expect_err("localhost must not resolve without an allow list");
        assert!(
            err.to_string().contains("localhost") && err.to_string().contains("loopback"),
            "{err}"
        );

        let addrs = resolve(&GuardedResolver::new(allow("127.0.0.0/8")), "localhost")
            .await
            .expect("localhost resolves when loopback is allowed");
        assert!(!addrs.is_empty());
        assert!(addrs.iter().all(|a| a.ip() == ip("127.0.0.1")), "{addrs:?}");
    }

    /// A one-route HTTP/1.1 server on 127.0.0.1 that answers `/hook` with 200 and anything else
    /// with a 302 back to `/hook`, and records the request lines it saw.
    async fn serve() -> (u16, Arc<Mutex<Vec<String>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("local addr").port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let log = Arc::clone(&log);
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    let head_end = loop {
                        let n = stream.read(&mut chunk).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                    let body_len = head
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("content-length")
                                .then(|| v.trim().parse::<usize>().ok())?
                        })
                        .unwrap_or(0);
                    while buf.len() < head_end + body_len {
                        let n = stream.read(&mut chunk).await.unwrap_or(0);
                        if n == 0 {
                            break;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                    }
                    let request_line = head.lines().next().unwrap_or_default().to_owned();
                    let response = if request_line.contains(" /hook ") {
                        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
                            .to_owned()
                    } else {
                        format!(
                            "HTTP/1.1 302 Found\r\nLocation: http://localhost:{port}/hook\r\n\
                             Content-Length: 0\r\nConnection: close\r\n\r\n"
                        )
                    };
                    log.lock().unwrap().push(request_line);
                    let _ = stream.write_all(response.as_bytes()).await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        (port, seen)
    }

    const TIMEOUT: Duration = Duration::from_secs(10);

    #[tokio::test]
    async fn delivery_is_blocked_without_allow_list() {
        let (port, seen) = serve().await;
        let client = delivery_client(AllowList::default(), TIMEOUT).expect("client");
        let err = client
            .post(format!("http://localhost:{port}/hook"))
            .body("{}")
            .send()
            .await
            .expect_err("loopback must be blocked");
        let guard = find_guard_error(&err).expect("the guard's error is in the chain");
        assert!(matches!(guard, GuardError::AllBlocked { .. }), "{guard:?}");

        let mut chain = Vec::new();
        let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(&err);
        while let Some(e) = cur {
            chain.push(e.to_string());
            cur = e.source();
        }
        let chain = chain.join(": ");
        assert!(chain.contains("loopback"), "{chain}");
        assert!(seen.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn delivery_succeeds_when_loopback_is_allowed() {
        let (port, seen) = serve().await;
        let client = delivery_client(allow("127.0.0.0/8"), TIMEOUT).expect("client");
        let url = check_url(
            &format!("http://localhost:{port}/hook"),
            &allow("127.0.0.0/8"),
        )
        .expect("url accepted");
        let resp = client
            .post(url)
            .header("content-type", "application/json")
            .body(r#"{"event":"job.completed"}"#)
            .send()
            .await
            .expect("delivered");
        assert_eq!(resp.status(), reqwest::StatusCode::OK);
        assert_eq!(resp.text().await.expect("body"), "ok");
        assert_eq!(
            *seen.lock().unwrap(),
            vec!["POST /hook HTTP/1.1".to_owned()]
        );
    }

    #[tokio::test]
    async fn delivery_does_not_follow_redirects() {
        let (port, seen) = serve().await;
        let client = delivery_client(allow("127.0.0.0/8"), TIMEOUT).expect("client");
        let resp = client
            .post(format!("http://localhost:{port}/moved"))
            .body("{}")
            .send()
            .await
            .expect("answered");
        assert_eq!(resp.status(), reqwest::StatusCode::FOUND);
        assert_eq!(
            *seen.lock().unwrap(),
            vec!["POST /moved HTTP/1.1".to_owned()]
        );
    }

    /// reqwest dials IP-literal hosts without asking the resolver, which is why `check_url` has to
    /// run at delivery time too. If this starts failing, reqwest began resolving literals through the
    /// resolver and the module documentation should be updated.
    #[tokio::test]
    async fn ip_literal_urls_bypass_the_resolver() {
        let (port, seen) = serve().await;
        let url = format!("http://127.0.0.1:{port}/hook");
        assert!(matches!(
            check_url(&url, &AllowList::default()),
            Err(GuardError::Blocked { .. })
        ));
        let client = delivery_client(AllowList::default(), TIMEOUT).expect("client");
        let resp = client.get(&url).send().await.expect("reached");
        assert_eq!(resp.status(), reqwest::StatusCode::OK);
        assert_eq!(seen.lock().unwrap().len(), 1);
    }
}
