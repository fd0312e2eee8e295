//! Client addresses for the per-address limit: the `--trusted-proxies` CIDR list, the key an
//! address is counted under (IPv6 by /64), and the client a trusted proxy's `X-Forwarded-For`
//! names.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

/// An IPv6 client is counted by its /64: one subscriber usually has a whole /64, and would
/// otherwise have 2^64 addresses to spread a flood over.
const IPV6_CLIENT_PREFIX: u8 = 64;

/// An IPv4 or IPv6 network, or one address (`10.0.0.0/8`, `2001:db8::/32`, `192.0.2.7`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    len: u8,
}

impl Cidr {
    /// Parses `ADDR` or `ADDR/LEN`. Host bits must be zero: `10.0.0.1/8` is refused rather
    /// than guessed at, since it is as likely a mistyped `/32` as a `10.0.0.0/8`.
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let s = s.trim();
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let net: IpAddr = addr.parse().map_err(|_| format!("'{s}' is not an IP address or CIDR (like 10.0.0.0/8)"))?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let len = match len {
            None => max,
            // Digits only: `u8::from_str` would also take a `+`.
            Some(l) if !l.is_empty() && l.len() <= 3 && l.bytes().all(|b| b.is_ascii_digit()) => {
                l.parse::<u8>().ok().filter(|n| *n <= max).ok_or_else(|| format!("'{s}': prefix length over {max}"))?
            }
            Some(_) => return Err(format!("'{s}': the prefix length must be a number")),
        };
        let cidr = Cidr { net, len };
        if cidr.mask(net) != net {
            return Err(format!("'{s}' has bits set past /{len} (did you mean {}/{len}?)", cidr.mask(net)));
        }
        Ok(cidr)
    }

    /// `ip` with the bits past this prefix cleared (in `ip`'s own family).
    fn mask(&self, ip: IpAddr) -> IpAddr {
        mask(ip, self.len)
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.net.is_ipv4() == ip.is_ipv4() && self.mask(ip) == self.net
    }
}

fn mask(ip: IpAddr, len: u8) -> IpAddr {
    match ip {
        IpAddr::V4(a) => {
            let m = u32::MAX.checked_shl(32 - u32::from(len.min(32))).unwrap_or(0);
            IpAddr::V4((u32::from(a) & m).into())
        }
        IpAddr::V6(a) => {
            let m = u128::MAX.checked_shl(128 - u32::from(len.min(128))).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(a) & m))
        }
    }
}

/// What a per-address limit counts: an IPv4 address (also when written IPv4-mapped), or an
/// IPv6 address's /64.
pub(crate) fn client_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        v4 @ IpAddr::V4(_) => v4,
        v6 => mask(v6, IPV6_CLIENT_PREFIX),
    }
}

/// The client a trusted proxy forwards for: `X-Forwarded-For`'s entries from right to left
/// (every proxy appends the address it got the request from, so only the right end is
/// written by hops we trust), the first that is not itself a trusted proxy; the leftmost when
/// all are. None when there is no entry, or one cannot be read before the client is found
/// (then nothing to its left can be believed either).
pub(crate) fn forwarded_client<'a>(
    values: impl DoubleEndedIterator<Item = &'a [u8]>,
    trusted: &[Cidr],
) -> Option<IpAddr> {
    let mut last = None;
    for value in values.rev() {
        let value = std::str::from_utf8(value).ok()?;
        for entry in value.rsplit(',').map(str::trim).filter(|e| !e.is_empty()) {
            let ip = parse_hop(entry)?;
            if !trusted.iter().any(|c| c.contains(ip)) {
                return Some(ip);
            }
            last = Some(ip);
        }
    }
    last
}

/// One `X-Forwarded-For` entry: an address, or an address with a port (`[::1]:80`,
/// `192.0.2.1:4711`), as some proxies write it.
fn parse_hop(entry: &str) -> Option<IpAddr> {
    entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<SocketAddr>().ok().map(|s| s.ip()))
        .or_else(|| entry.strip_prefix('[')?.strip_suffix(']')?.parse().ok())
        .map(|ip: IpAddr| ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cidrs_parse_and_match() {
        let c = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(c.contains(ip("10.255.1.2")) && !c.contains(ip("11.0.0.1")));
        assert!(c.contains(ip("::ffff:10.1.2.3")), "IPv4-mapped addresses are IPv4");
        assert!(!c.contains(ip("::a00:1")), "an IPv6 address is never in an IPv4 network");
        let one = Cidr::parse(" 192.0.2.7 ").unwrap();
        assert!(one.contains(ip("192.0.2.7")) && !one.contains(ip("192.0.2.8")));
        let v6 = Cidr::parse("2001:db8::/32").unwrap();
        assert!(v6.contains(ip("2001:db8:ffff::1")) && !v6.contains(ip("2001:db9::1")));
        assert!(Cidr::parse("::1").unwrap().contains(ip("::1")));
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains(ip("203.0.113.9")));
        assert!(Cidr::parse("::/0").unwrap().contains(ip("2001:db8::1")));
        assert!(Cidr::parse("172.16.0.0/12").unwrap().contains(ip("172.31.255.255")));
        assert!(!Cidr::parse("172.16.0.0/12").unwrap().contains(ip("172.32.0.0")));
    }

    #[test]
    fn bad_cidrs_are_refused_with_the_value() {
        for bad in [
            "",
            "nonsense",
            "10.0.0.0/33",
            "::/129",
            "10.0.0.0/",
            "10.0.0.0/+8",
            "10.0.0.0/a",
            "10.0.0.1/8",
            "10.0.0.0/8/8",
            "300.0.0.0/8",
            "[::1]",
        ] {
            let e = Cidr::parse(bad).expect_err(bad);
            assert!(e.contains(bad.trim()), "{bad:?}: {e}");
        }
        assert!(Cidr::parse("10.0.0.1/8").unwrap_err().contains("10.0.0.0/8"), "suggests the network");
    }

    fn xff(values: &[&str], trusted: &[&str]) -> Option<IpAddr> {
        let trusted: Vec<Cidr> = trusted.iter().map(|c| Cidr::parse(c).unwrap()).collect();
        forwarded_client(values.iter().map(|v| v.as_bytes()), &trusted)
    }

    #[test]
    fn forwarded_for_is_read_from_the_right() {
        let proxies = ["10.0.0.0/8"];
        assert_eq!(xff(&["198.51.100.1"], &proxies), Some(ip("198.51.100.1")));
        // A client can write anything on the left; only the rightmost untrusted hop counts.
        assert_eq!(xff(&["1.2.3.4, 198.51.100.1"], &proxies), Some(ip("198.51.100.1")));
        assert_eq!(xff(&["1.2.3.4, 198.51.100.1, 10.0.0.5"], &proxies), Some(ip("198.51.100.1")));
        // Several headers are one list, in order.
        assert_eq!(xff(&["1.2.3.4", "198.51.100.1, 10.1.1.1", "10.2.2.2"], &proxies), Some(ip("198.51.100.1")));
        // Every hop trusted: the leftmost.
        assert_eq!(xff(&["10.9.9.9, 10.0.0.5"], &proxies), Some(ip("10.9.9.9")));
        // Ports, brackets and mapped addresses.
        assert_eq!(xff(&["198.51.100.1:4711"], &proxies), Some(ip("198.51.100.1")));
        assert_eq!(xff(&["[2001:db8::1]:443"], &proxies), Some(ip("2001:db8::1")));
        assert_eq!(xff(&["[2001:db8::1]"], &proxies), Some(ip("2001:db8::1")));
        assert_eq!(xff(&["::ffff:198.51.100.1"], &proxies), Some(ip("198.51.100.1")));
        // Nothing usable: the caller falls back to the peer.
        assert_eq!(xff(&[], &proxies), None);
        assert_eq!(xff(&[" , "], &proxies), None);
        assert_eq!(xff(&["unknown"], &proxies), None);
        assert_eq!(xff(&["198.51.100.1, garbage"], &proxies), None, "nothing left of an unreadable hop is believed");
        // Garbage left of the client does not matter.
        assert_eq!(xff(&["garbage, 198.51.100.1"], &proxies), Some(ip("198.51.100.1")));
    }

    #[test]
    fn clients_are_keyed_by_address_and_ipv6_slash_64() {
        assert_eq!(client_key(ip("192.0.2.1")), ip("192.0.2.1"));
        assert_eq!(client_key(ip("::ffff:192.0.2.1")), ip("192.0.2.1"));
        assert_eq!(client_key(ip("2001:db8:1:2:aaaa::1")), ip("2001:db8:1:2::"));
        assert_eq!(client_key(ip("2001:db8:1:2:bbbb::9")), client_key(ip("2001:db8:1:2::7")));
        assert_ne!(client_key(ip("2001:db8:1:3::1")), client_key(ip("2001:db8:1:2::1")));
    }
}
