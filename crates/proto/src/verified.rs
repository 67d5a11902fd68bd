//! The witness of a successful verification.

use core::ops::Deref;

/// A value that passed signature verification: [`crate::token::verify`]
/// returns `Verified<Claims>` and [`crate::cose::verify`] returns
/// `Verified<SignedObject>`. Only those functions can make one (the
/// constructor is private to this crate), so a function that takes a
/// `Verified<T>` cannot be handed claims or a payload that nobody checked.
/// The unchecked counterpart is [`crate::danger::Unverified`].
///
/// Outside this crate there is no way to make one:
///
/// ```compile_fail
/// let forged = portcullis_proto::Verified(42);
/// ```
///
/// ```compile_fail
/// let forged = portcullis_proto::Verified::new(42);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified<T>(T);

impl<T> Verified<T> {
    /// Wraps a value that has just passed verification.
    pub(crate) fn new(value: T) -> Verified<T> {
        Verified(value)
    }

    /// The verified value.
    pub fn get(&self) -> &T {
        &self.0
    }

    /// The verified value, giving up the witness.
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> Deref for Verified<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}
