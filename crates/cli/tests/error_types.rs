//! Every error type of the workspace's host-side crates is a
//! `core::error::Error` (so callers can box it, chain it and print its
//! sources), and the variants that wrap another error expose it through
//! `source()`. The Xen platform's errors are checked in
//! `crates/xen/tests/error_types.rs`, the CLI's own `Failure` in `main.rs`.

use core::error::Error;

use portcullis_apps::common::AppError;
use portcullis_apps::link::LinkError;
use portcullis_apps::trust::TrustError;
use portcullis_authority::acl::{AclError, AclErrorKind};
use portcullis_authority::authority::{ExportError, InitError};
use portcullis_authority::keys::KeyError as AuthorityKeyError;
use portcullis_authority::sealed::SealError;
use portcullis_hosted::HostedError;
use portcullis_proto::cose::CoseError;
use portcullis_proto::envelope::{DecodeError, EncodeError, FieldError};
use portcullis_vchan::{BackendError, FrameError, LayoutError, VchanError};

/// Compiles only if every listed type implements `Error` (and so coerces to
/// `&dyn Error`); returns their names.
macro_rules! error_types {
    ($($ty:ty),+ $(,)?) => {{
        fn coerces<E: Error + 'static>(e: &E) -> &(dyn Error + 'static) {
            e
        }
        vec![$({
            let _: fn(&$ty) -> &(dyn Error + 'static) = coerces::<$ty>;
            stringify!($ty)
        }),+]
    }};
}

#[test]
fn every_error_type_is_a_core_error() {
    let names = error_types![
        // proto
        portcullis_proto::envelope::FieldError,
        portcullis_proto::envelope::DecodeError,
        portcullis_proto::envelope::EncodeError,
        portcullis_proto::scope::ScopeError,
        portcullis_proto::cose::CoseError,
        portcullis_proto::key::KeyError,
        portcullis_proto::token::TokenError,
        portcullis_proto::token::KeysetError,
        portcullis_proto::token::ReplayError,
        portcullis_proto::token::VerifyError,
        // authority
        portcullis_authority::totp::TotpError,
        portcullis_authority::drbg::DrbgError,
        portcullis_authority::acl::AclError,
        portcullis_authority::acl::DenyReason,
        portcullis_authority::audit::AuditError,
        portcullis_authority::audit::ChainError,
        portcullis_authority::audit::LogError,
        portcullis_authority::keys::KeyError,
        portcullis_authority::authority::InitError,
        portcullis_authority::authority::ExportError,
        portcullis_authority::revocation::RevokeError,
        portcullis_authority::sealed::SealError,
        portcullis_authority::unlock::UnlockError,
        // vchan
        portcullis_vchan::LayoutError,
        portcullis_vchan::VchanError,
        portcullis_vchan::BackendError,
        portcullis_vchan::FrameError,
        // platform
        portcullis_platform::PlatformError,
        // apps
        portcullis_apps::common::AppError,
        portcullis_apps::trust::TrustError,
        portcullis_apps::link::LinkError,
        // hosted
        portcullis_hosted::HostedError,
    ];
    assert_eq!(names.len(), 32);
}

/// The messages of `e` and of every error under it, outermost first.
fn chain(e: &(dyn Error + 'static)) -> Vec<String> {
    let mut out = Vec::new();
    let mut next = Some(e);
    while let Some(e) = next {
        out.push(e.to_string());
        next = e.source();
    }
    out
}

#[test]
fn wrapping_variants_expose_what_they_wrap() {
    let field = FieldError { field: "nonce", reason: "length out of range" };
    let deep = AppError::Link(LinkError::Decode(DecodeError::Invalid(field)));
    let got = chain(&deep);
    assert_eq!(got.len(), 4, "{got:?}");
    assert_eq!(got[3], field.to_string());

    let vchan = LinkError::Frame(FrameError::Vchan(VchanError::Backend(BackendError::Map)));
    let got = chain(&vchan);
    assert_eq!(got.len(), 4, "{got:?}");
    assert_eq!(got[3], BackendError::Map.to_string());

    let cases: Vec<(Box<dyn Error>, String)> = vec![
        (Box::new(EncodeError::Invalid(field)), field.to_string()),
        (
            Box::new(VchanError::Layout(LayoutError::SizeTooLarge)),
            LayoutError::SizeTooLarge.to_string(),
        ),
        (
            Box::new(TrustError::Signature(CoseError::BadSignature)),
            CoseError::BadSignature.to_string(),
        ),
        (Box::new(HostedError::Backend(BackendError::Grant)), BackendError::Grant.to_string()),
        (
            Box::new(InitError::Keys(AuthorityKeyError::BadTiming)),
            AuthorityKeyError::BadTiming.to_string(),
        ),
        (
            Box::new(InitError::Acl(AclError { line: 3, kind: AclErrorKind::BadName })),
            AclError { line: 3, kind: AclErrorKind::BadName }.to_string(),
        ),
        (Box::new(ExportError::Seal(SealError::Truncated)), SealError::Truncated.to_string()),
    ];
    for (e, inner) in cases {
        let source = e.source().map(|s| s.to_string());
        assert_eq!(source.as_deref(), Some(inner.as_str()), "{e}");
    }

    // Leaves have no source.
    assert!(DecodeError::UnknownType.source().is_none());
    assert!(AppError::Config("x".into()).source().is_none());
}
