//! The four Portcullis guests' application code, written once against
//! [`portcullis_platform::Platform`] and run unchanged on the Xen and the
//! hosted platforms. Each guest is a thin loop: decisions belong to
//! `portcullis-authority` (cryptod) and `portcullis-proto` (token checks).
#![no_std]
#![forbid(unsafe_code)]
extern crate alloc;

pub mod common;
pub mod console;
pub mod cryptod;
pub mod entropyd;
pub mod inbox;
pub mod link;
pub mod net;
pub mod policy_pd;
pub mod settings;
pub mod startup;
pub mod trust;
pub mod unlocker;
