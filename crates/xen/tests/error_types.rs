//! Every error type of the Xen platform is a `core::error::Error`, and the
//! variants that wrap another error expose it through `source()`.
#![cfg(target_arch = "x86_64")]

use core::error::Error;

use portcullis_xen::entropy::EntropyError;
use portcullis_xen::grant::GrantError;
use portcullis_xen::hypercall::XenError;
use portcullis_xen::start_info::StartInfoError;
use portcullis_xen::xen::SetupError;
use portcullis_xen::xenstore::wire::{Errno, XsError};
use portcullis_xen::PlatformSetupError;

fn as_error<E: Error + 'static>(e: &E) -> &(dyn Error + 'static) {
    e
}

#[test]
fn every_error_type_is_a_core_error() {
    let listed: [fn() -> String; 9] = [
        || as_error(&XenError(-13)).to_string(),
        || as_error(&GrantError::Xen(XenError(-1))).to_string(),
        || as_error(&Errno::NoEnt).to_string(),
        || as_error(&XsError::Timeout).to_string(),
        || as_error(&portcullis_xen::console::ConsoleError::NoInput).to_string(),
        || as_error(&StartInfoError::BadMagic).to_string(),
        || as_error(&EntropyError::NoSource).to_string(),
        || as_error(&SetupError::NoFreeWindow).to_string(),
        || as_error(&PlatformSetupError::NoXen).to_string(),
    ];
    for describe in listed {
        assert!(!describe().is_empty());
    }
}

#[test]
fn wrapping_variants_expose_what_they_wrap() {
    let source = |e: &dyn Error| e.source().map(|s| s.to_string());
    let xen = XenError(-13);
    assert_eq!(source(&GrantError::Xen(xen)), Some(xen.to_string()));
    assert_eq!(source(&SetupError::SharedInfo(xen)), Some(xen.to_string()));
    assert_eq!(source(&XsError::Daemon(Errno::Acces)), Some("EACCES".to_string()));
    let grant = GrantError::Xen(xen);
    assert_eq!(source(&PlatformSetupError::Grant(grant)), Some(grant.to_string()));
    let store = XsError::Daemon(Errno::NoEnt);
    assert_eq!(source(&PlatformSetupError::Store(store)), Some(store.to_string()));
    assert_eq!(source(&XsError::Timeout), None);
}
