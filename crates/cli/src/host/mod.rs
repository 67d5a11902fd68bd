//! `portcullis host`: the dom0 service that does a toolstack's work for the
//! Portcullis guests (see docs/operations.md and docs/xen.md).

pub mod links;
pub mod peers;
