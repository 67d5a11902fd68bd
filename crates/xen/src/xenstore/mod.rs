//! A xenstore client on the shared ring (`HVM_PARAM_STORE_PFN` and
//! `HVM_PARAM_STORE_EVTCHN`).
//!
//! Three layers: [`wire`] is the message codec, [`ring`] the byte rings of
//! the interface page over any `SharedMem`, and [`client`] the protocol
//! (requests one at a time, replies matched by request id, late replies to
//! timed-out requests skipped, watch events queued for
//! [`Client::wait_watch`]) over the [`StoreRing`] trait. All three are pure
//! and tested on the host; [`Xenstore`] is the client over the real ring.

pub mod client;
pub mod ring;
#[cfg(test)]
pub(crate) mod sim;
pub mod wire;

pub use client::{Client, Perm, StoreRing, Tx};

#[cfg(target_arch = "x86_64")]
pub use xen_ring::{XenRing, Xenstore};

#[cfg(target_arch = "x86_64")]
mod xen_ring {
    use portcullis_vchan::Port;

    use super::client::{Client, StoreRing};
    use super::wire::{Op, XsError};
    use crate::page::SharedPages;
    use crate::{evtchn, hypercall, xen};

    /// The xenstore connection of this domain.
    pub type Xenstore = Client<XenRing>;

    /// The xenstore interface page and its event channel.
    #[derive(Debug)]
    pub struct XenRing {
        page: SharedPages,
        port: Port,
    }

    impl StoreRing for XenRing {
        fn write(&mut self, bytes: &[u8]) -> Result<usize, XsError> {
            super::ring::write_requests(&self.page, bytes)
        }

        fn read(&mut self, buf: &mut [u8]) -> Result<usize, XsError> {
            super::ring::read_responses(&self.page, buf)
        }

        fn notify(&mut self) -> Result<(), XsError> {
            evtchn::send(self.port).map_err(|_| XsError::Transport)
        }

        fn now_ns(&mut self) -> Result<u64, XsError> {
            xen::system_time_ns().ok_or(XsError::Transport)
        }

        fn wait(&mut self, deadline_ns: u64) -> Result<(), XsError> {
            let now = self.now_ns()?;
            if now >= deadline_ns {
                return Err(XsError::Timeout);
            }
            evtchn::wait_any(&[self.port], Some(deadline_ns - now))
                .map_err(|_| XsError::Transport)?;
            Ok(())
        }

        fn slow(&mut self, _op: Op) {
            const _: () = assert!(
                super::client::SLOW_REPLY_NS == 5_000_000_000
                    && super::client::REQUEST_TIMEOUT_NS == 60_000_000_000
            );
            // Not `println!`: the console's lock may be held by whoever
            // made this request. Without the operation's name (a table of
            // names costs cryptod's image 560 bytes).
            crate::console::emergency_write("xenstore: no reply in 5 s (waits 60 s)\n");
        }
    }

    impl Client<XenRing> {
        /// Connects to the ring Xen names in the HVM parameters.
        pub fn connect() -> Result<Xenstore, XsError> {
            let pfn = hypercall::hvm_get_param(crate::abi::hvm::PARAM_STORE_PFN)
                .ok()
                .filter(|&p| p != 0 && p < (1 << 20))
                .ok_or(XsError::Transport)?;
            let port = hypercall::hvm_get_param(crate::abi::hvm::PARAM_STORE_EVTCHN)
                .map_err(|_| XsError::Transport)?;
            // SAFETY: Xen names this frame (below 4 GiB, checked above) as
            // our xenstore ring; it is identity-mapped and never reused.
            let page = unsafe { SharedPages::new((pfn as usize) << 12, crate::abi::PAGE_SIZE) };
            Ok(Client::new(XenRing { page, port: Port(port as u32) }))
        }
    }
}
