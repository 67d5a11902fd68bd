//! Capability scopes: the closed set of actions a token can grant.
//!
//! On the wire a scope is its text name (`luks:unlock`); a token's `scope` claim
//! is the space-separated list of names (the ACE convention, RFC 9200 §5.8.1).

use core::fmt;

use crate::cbor::text_enum;

text_enum! {
    /// One capability that cryptod can grant. `ALL` is in declaration order,
    /// which is the bit order of [`ScopeSet`].
    #[derive(PartialOrd, Ord)]
    pub enum Scope {
        /// Open a LUKS volume with a secret derived by cryptod.
        LuksUnlock = "luks:unlock",
        /// Change a network rule in a policy enforcer.
        NetModify = "net:modify",
        /// Read (not change) network policy state.
        NetRead = "net:read",
        /// Revoke an issued token before it expires.
        TokenRevoke = "token:revoke",
        /// Ask cryptod to rotate its token signing key.
        KeyRotate = "key:rotate",
    }
}

impl Scope {
    const fn bit(self) -> u32 {
        1 << (self as u32)
    }
}

/// A set of scopes (a small bitset; no allocation).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ScopeSet(u32);

/// Why a scope string could not be parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScopeError {
    /// A name that is not one of [`Scope::ALL`].
    Unknown,
    /// The same scope named twice, an empty name (two spaces), or an empty list.
    Malformed,
}

impl fmt::Display for ScopeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ScopeError::Unknown => "unknown scope",
            ScopeError::Malformed => "malformed scope list",
        })
    }
}

impl core::error::Error for ScopeError {}

impl ScopeSet {
    /// The empty set.
    pub const EMPTY: ScopeSet = ScopeSet(0);

    /// A set holding just `scope`.
    pub const fn single(scope: Scope) -> ScopeSet {
        ScopeSet(scope.bit())
    }

    /// Whether `scope` is in the set.
    pub const fn contains(self, scope: Scope) -> bool {
        self.0 & scope.bit() != 0
    }

    /// Whether every scope of `other` is in `self`.
    pub const fn is_superset(self, other: ScopeSet) -> bool {
        self.0 & other.0 == other.0
    }

    /// Adds `scope`; returns false if it was already present.
    pub fn insert(&mut self, scope: Scope) -> bool {
        let had = self.contains(scope);
        self.0 |= scope.bit();
        !had
    }

    /// The intersection of two sets.
    pub const fn intersection(self, other: ScopeSet) -> ScopeSet {
        ScopeSet(self.0 & other.0)
    }

    /// Whether the set is empty.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The scopes in the set, in [`Scope::ALL`] order.
    pub fn iter(self) -> impl Iterator<Item = Scope> {
        Scope::ALL.iter().copied().filter(move |s| self.contains(*s))
    }

    /// Parses a space-separated list of scope names (the CWT `scope` claim).
    /// Rejects unknown names, duplicates, empty names and an empty list.
    pub fn parse_list(list: &str) -> Result<ScopeSet, ScopeError> {
        let mut set = ScopeSet::EMPTY;
        if list.is_empty() {
            return Err(ScopeError::Malformed);
        }
        for name in list.split(' ') {
            if name.is_empty() {
                return Err(ScopeError::Malformed);
            }
            let scope = Scope::parse(name).ok_or(ScopeError::Unknown)?;
            if !set.insert(scope) {
                return Err(ScopeError::Malformed);
            }
        }
        Ok(set)
    }
}

impl FromIterator<Scope> for ScopeSet {
    fn from_iter<I: IntoIterator<Item = Scope>>(iter: I) -> Self {
        let mut set = ScopeSet::EMPTY;
        for s in iter {
            set.insert(s);
        }
        set
    }
}

/// Writes the space-separated list form, in [`Scope::ALL`] order.
impl fmt::Display for ScopeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, s) in self.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            f.write_str(s.as_str())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    #[test]
    fn list_round_trips() {
        let set = ScopeSet::parse_list("net:modify luks:unlock").unwrap();
        assert!(set.contains(Scope::LuksUnlock) && set.contains(Scope::NetModify));
        assert!(!set.contains(Scope::NetRead));
        assert_eq!(set.to_string(), "luks:unlock net:modify");
    }

    #[test]
    fn bad_lists_are_refused() {
        assert_eq!(ScopeSet::parse_list(""), Err(ScopeError::Malformed));
        assert_eq!(ScopeSet::parse_list("net:modify  luks:unlock"), Err(ScopeError::Malformed));
        assert_eq!(ScopeSet::parse_list("net:modify net:modify"), Err(ScopeError::Malformed));
        assert_eq!(ScopeSet::parse_list("root:all"), Err(ScopeError::Unknown));
    }
}
