//! Handshakes in progress: before a peer has shown a client certificate it
//! holds a connection slot, so nothing unauthenticated may hold one for
//! long or hold many. A handshake gets `handshake_timeout` to finish, and
//! one address (an IPv6 /64) may have at most `handshakes_per_address` in
//! progress; past that, new attempts from it are refused at once.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex};

/// Handshakes in progress per peer address, shared by the accept loop.
pub struct Handshakes {
    cap: usize,
    /// In progress, and whether a refusal was logged since the address
    /// was last under the cap (a flood from one address logs one line).
    by_addr: Mutex<HashMap<IpAddr, (usize, bool)>>,
}

/// One handshake in progress, counted against its address until dropped.
pub struct Pending {
    hs: Arc<Handshakes>,
    addr: IpAddr,
}

/// What one peer holds: its address, or the /64 its IPv6 address is in (a
/// single host is usually given a whole /64).
fn key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
        v4 => v4,
    }
}

impl Handshakes {
    /// At most `cap` handshakes in progress per address.
    pub fn new(cap: usize) -> Arc<Handshakes> {
        Arc::new(Handshakes {
            cap,
            by_addr: Mutex::new(HashMap::new()),
        })
    }

    /// Counts a new handshake from `ip`; refused when its address already
    /// has `cap` in progress, with whether this is the first refusal since
    /// it was under the cap (the one to log).
    pub fn begin(self: &Arc<Self>, ip: IpAddr) -> Result<Pending, bool> {
        let addr = key(ip);
        // A poisoned map still counts.
        let mut m = self.by_addr.lock().unwrap_or_else(|p| p.into_inner());
        let (n, logged) = m.entry(addr).or_insert((0, false));
        if *n >= self.cap {
            return Err(!std::mem::replace(logged, true));
        }
        *n += 1;
        Ok(Pending {
            hs: self.clone(),
            addr,
        })
    }

    /// The limit per address.
    pub fn cap(&self) -> usize {
        self.cap
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        let mut m = self.hs.by_addr.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((n, logged)) = m.get_mut(&self.addr) {
            *n -= 1;
            *logged = false;
            if *n == 0 {
                m.remove(&self.addr);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshakes_are_capped_per_address_and_released() {
        let hs = Handshakes::new(2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let p1 = hs.begin(a).unwrap();
        let _p2 = hs.begin(a).unwrap();
        // Refused; only the first refusal is to be logged.
        assert_eq!(hs.begin(a).err(), Some(true));
        assert_eq!(hs.begin(a).err(), Some(false));
        // Another address is not affected.
        let _q = hs.begin("192.0.2.2".parse().unwrap()).unwrap();
        drop(p1);
        let _p3 = hs.begin(a).unwrap();
        assert_eq!(hs.begin(a).err(), Some(true));
    }

    #[test]
    fn an_ipv6_peer_is_its_64_and_a_mapped_ipv4_its_address() {
        let hs = Handshakes::new(1);
        let _p = hs.begin("2001:db8:1:2::1".parse().unwrap()).unwrap();
        assert!(hs.begin("2001:db8:1:2:ffff::9".parse().unwrap()).is_err());
        let _q = hs.begin("2001:db8:1:3::1".parse().unwrap()).unwrap();
        let _r = hs.begin("192.0.2.7".parse().unwrap()).unwrap();
        assert!(hs.begin("::ffff:192.0.2.7".parse().unwrap()).is_err());
        drop(_p);
        assert_eq!(hs.by_addr.lock().unwrap().len(), 2);
    }
}
