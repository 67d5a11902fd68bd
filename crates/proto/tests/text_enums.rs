//! Every closed text set (`text_enum!`) names each value once, and its
//! name parses back to it: `as_str` and `parse` read one NUL-separated
//! table by index (image size, issue 14), so a name out of step with its
//! variant would show here.

use std::collections::HashSet;
use std::fmt::Debug;

use portcullis_proto::cose::ContentType;
use portcullis_proto::envelope::MsgType;
use portcullis_proto::msg::{
    AdminOp, AdminResult, AuditAction, AuditResult, Enforced, ErrorCode, IssueResult,
    OutcomeResult, RevokeResult, SealAlg, TotpAlg, TotpResult, UnlockOutcome,
};
use portcullis_proto::scope::Scope;

fn round_trips<T: Copy + PartialEq + Debug>(
    all: &[T],
    as_str: impl Fn(T) -> &'static str,
    parse: impl Fn(&str) -> Option<T>,
) {
    let mut seen = HashSet::new();
    for &v in all {
        let name = as_str(v);
        assert!(!name.is_empty() && !name.contains('\0'), "{v:?} has name {name:?}");
        assert!(seen.insert(name), "{name:?} names two values");
        assert_eq!(parse(name), Some(v), "{name:?}");
    }
    assert_eq!(parse(""), None);
    assert_eq!(parse("no such name"), None);
}

macro_rules! check {
    ($($t:ty),+) => {
        $( round_trips(<$t>::ALL, <$t>::as_str, <$t>::parse); )+
    };
}

#[test]
fn every_text_set_names_each_value_once_and_parses_back() {
    check!(
        TotpResult,
        IssueResult,
        RevokeResult,
        UnlockOutcome,
        ErrorCode,
        SealAlg,
        AuditAction,
        AuditResult,
        AdminResult,
        AdminOp,
        TotpAlg,
        Enforced,
        OutcomeResult,
        MsgType,
        Scope,
        ContentType
    );
}
