//! Places under two limits at once: how many things (connections, watch streams) are held in
//! all, and how many from one client address. A place is taken before the thing is served and
//! given back when its [`Slot`] drops, so a client that holds as many as it may is refused one
//! more while every other client is still served.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Which limit a refused place would have crossed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    /// All places are taken.
    Total(usize),
    /// The client holds this many, its limit.
    Client(IpAddr, usize),
}

#[derive(Debug, Default)]
struct Held {
    total: usize,
    per_client: HashMap<IpAddr, usize>,
}

/// The places of one listener or one kind of stream; cheap to clone (clones share them).
#[derive(Debug, Clone)]
pub struct Slots {
    held: Arc<Mutex<Held>>,
    max: usize,
    max_per_client: usize,
}

/// One place taken; given back when dropped.
#[derive(Debug)]
pub struct Slot {
    held: Arc<Mutex<Held>>,
    client: Option<IpAddr>,
}

impl Slots {
    /// At most `max` places, `max_per_client` of them for one address.
    pub fn new(max: usize, max_per_client: usize) -> Self {
        Self {
            held: Arc::default(),
            max,
            max_per_client,
        }
    }

    /// A place for `client` (counted in all only when its address is unknown).
    pub fn take(&self, client: Option<IpAddr>) -> Result<Slot, Full> {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        if held.total >= self.max {
            return Err(Full::Total(held.total));
        }
        if let Some(ip) = client {
            let n = held.per_client.get(&ip).copied().unwrap_or(0);
            if n >= self.max_per_client {
                return Err(Full::Client(ip, n));
            }
            held.per_client.insert(ip, n + 1);
        }
        held.total += 1;
        Ok(Slot {
            held: self.held.clone(),
            client,
        })
    }

    /// Places held now.
    pub fn held(&self) -> usize {
        self.held.lock().map_or(0, |h| h.total)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        held.total = held.total.saturating_sub(1);
        if let Some(ip) = self.client
            && let Some(n) = held.per_client.get_mut(&ip)
        {
            *n -= 1;
            if *n == 0 {
                held.per_client.remove(&ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_bounded_in_all_and_per_client_and_given_back() {
        let slots = Slots::new(3, 2);
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        let a1 = slots.take(Some(a)).unwrap();
        let _a2 = slots.take(Some(a)).unwrap();
        assert_eq!(slots.take(Some(a)).unwrap_err(), Full::Client(a, 2));
        let _b1 = slots.take(Some(b)).unwrap();
        assert_eq!(slots.take(Some(b)).unwrap_err(), Full::Total(3));
        assert_eq!(slots.take(None).unwrap_err(), Full::Total(3));
        drop(a1);
        assert_eq!(slots.held(), 2);
        let _a3 = slots.take(Some(a)).unwrap();
        assert_eq!(slots.held(), 3);
    }
}
