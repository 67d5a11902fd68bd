//! The live name-to-domain-id map of the Portcullis guests, shared by the
//! service's threads: the xenstore watcher sets it, the audit collector and
//! the unlock agent follow it (a guest created again has a new domid).

use std::collections::BTreeMap;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Duration;

/// The generation and the map.
type State = (u64, BTreeMap<String, u16>);

/// Domain name to domain id, with a generation that changes on every update.
#[derive(Clone, Default)]
pub struct Peers {
    inner: Arc<(Mutex<State>, Condvar)>,
}

impl Peers {
    /// The current domid of `name`, if such a domain exists now.
    pub fn get(&self, name: &str) -> Option<u16> {
        let (lock, _) = &*self.inner;
        lock.lock().unwrap_or_else(PoisonError::into_inner).1.get(name).copied()
    }

    /// The whole map and its generation.
    pub fn snapshot(&self) -> (u64, BTreeMap<String, u16>) {
        let (lock, _) = &*self.inner;
        lock.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Replaces the map; wakes every waiter if it changed.
    pub fn set(&self, map: BTreeMap<String, u16>) {
        let (lock, cv) = &*self.inner;
        let mut g = lock.lock().unwrap_or_else(PoisonError::into_inner);
        if g.1 != map {
            g.0 = g.0.wrapping_add(1);
            g.1 = map;
            cv.notify_all();
        }
    }

    /// Waits until the generation differs from `seen` or `timeout` passes;
    /// returns the generation now.
    pub fn wait_change(&self, seen: u64, timeout: Duration) -> u64 {
        let (lock, cv) = &*self.inner;
        let g = lock.lock().unwrap_or_else(PoisonError::into_inner);
        let (g, _) = cv
            .wait_timeout_while(g, timeout, |g| g.0 == seen)
            .unwrap_or_else(PoisonError::into_inner);
        g.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_bumps_the_generation_only_on_change_and_wakes_waiters() {
        let p = Peers::default();
        let (g0, _) = p.snapshot();
        p.set(BTreeMap::from([("cryptod".to_string(), 3)]));
        let (g1, m) = p.snapshot();
        assert_ne!(g0, g1);
        assert_eq!(m.get("cryptod"), Some(&3));
        p.set(BTreeMap::from([("cryptod".to_string(), 3)]));
        assert_eq!(p.snapshot().0, g1, "an identical map is not a change");
        let q = p.clone();
        let t = std::thread::spawn(move || q.wait_change(g1, Duration::from_secs(10)));
        std::thread::sleep(Duration::from_millis(50));
        p.set(BTreeMap::from([("cryptod".to_string(), 9)]));
        assert_ne!(t.join().unwrap(), g1);
        assert_eq!(p.get("cryptod"), Some(9));
        assert_eq!(p.get("unlocker"), None);
        assert_eq!(p.wait_change(p.snapshot().0, Duration::from_millis(10)), p.snapshot().0);
    }
}
