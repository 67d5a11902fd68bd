//! A xenstore client on the shared ring (`HVM_PARAM_STORE_PFN` and
//! `HVM_PARAM_STORE_EVTCHN`).
//!
//! Requests are sent one at a time; watch events that arrive while a reply
//! is awaited are queued (a bounded number) for [`Xenstore::wait_watch`].

pub mod wire;

#[cfg(target_arch = "x86_64")]
pub use client::*;

#[cfg(target_arch = "x86_64")]
mod client {
    use alloc::collections::VecDeque;
    use alloc::string::String;
    use alloc::vec::Vec;
    use core::fmt::Write as _;
    use core::sync::atomic::{fence, Ordering};

    use portcullis_vchan::{DomId, Port, SharedMem};

    use super::wire::{self, Message, Op, Part, Reassembler, XsError};
    use crate::abi::xenstore as ring;
    use crate::console::ring_used;
    use crate::page::SharedPages;
    use crate::{evtchn, hypercall, xen};

    /// Most watch events kept while waiting for replies.
    const MAX_QUEUED_EVENTS: usize = 16;
    /// How long one request may take.
    const REQUEST_TIMEOUT_NS: u64 = 10_000_000_000;

    /// A transaction id (0 is "no transaction").
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Tx(pub u32);

    impl Tx {
        /// Outside any transaction.
        pub const NONE: Tx = Tx(0);
    }

    /// One permission entry: `n<domid>` (none), `r` (read), `w`, `b` (both).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Perm {
        /// No access (as the first entry: the owner).
        None(DomId),
        /// Read access.
        Read(DomId),
        /// Write access.
        Write(DomId),
        /// Read and write access.
        Both(DomId),
    }

    /// The xenstore connection.
    #[derive(Debug)]
    pub struct Xenstore {
        page: SharedPages,
        port: Port,
        next_req: u32,
        rx: Reassembler,
        events: VecDeque<(String, String)>,
        watches: Vec<(String, String)>,
    }

    impl Xenstore {
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
            Ok(Xenstore {
                page,
                port: Port(port as u32),
                next_req: 1,
                rx: Reassembler::default(),
                events: VecDeque::new(),
                watches: Vec::new(),
            })
        }

        fn deadline(timeout_ns: u64) -> Result<u64, XsError> {
            Ok(xen::system_time_ns().ok_or(XsError::Transport)?.saturating_add(timeout_ns))
        }

        /// Waits for the store event until `deadline`.
        fn wait_event(&self, deadline: u64) -> Result<(), XsError> {
            let now = xen::system_time_ns().ok_or(XsError::Transport)?;
            if now >= deadline {
                return Err(XsError::Timeout);
            }
            evtchn::wait_any(&[self.port], Some(deadline - now)).map_err(|_| XsError::Transport)?;
            Ok(())
        }

        fn send_bytes(&mut self, mut bytes: &[u8], deadline: u64) -> Result<(), XsError> {
            while !bytes.is_empty() {
                let cons = self.page.load_u32(ring::REQ_CONS);
                let prod = self.page.load_u32(ring::REQ_PROD);
                let used = ring_used(prod, cons, ring::RING_SIZE).ok_or(XsError::Protocol)?;
                let free = (ring::RING_SIZE - used) as usize;
                if free == 0 {
                    evtchn::send(self.port).map_err(|_| XsError::Transport)?;
                    self.wait_event(deadline)?;
                    continue;
                }
                let n = free.min(bytes.len());
                for (i, &b) in bytes.iter().take(n).enumerate() {
                    let idx = prod.wrapping_add(i as u32) % ring::RING_SIZE;
                    self.page.store_u8(ring::REQ + idx as usize, b);
                }
                fence(Ordering::Release);
                self.page.store_u32(ring::REQ_PROD, prod.wrapping_add(n as u32));
                evtchn::send(self.port).map_err(|_| XsError::Transport)?;
                bytes = bytes.get(n..).unwrap_or_default();
            }
            Ok(())
        }

        /// Reads whatever the response ring holds; returns a complete message if one formed.
        fn poll_message(&mut self) -> Result<Option<Message>, XsError> {
            loop {
                let cons = self.page.load_u32(ring::RSP_CONS);
                let prod = self.page.load_u32(ring::RSP_PROD);
                let avail =
                    ring_used(prod, cons, ring::RING_SIZE).ok_or(XsError::Protocol)? as usize;
                if avail == 0 {
                    return Ok(None);
                }
                fence(Ordering::Acquire);
                let mut chunk = [0u8; 64];
                let n = avail.min(self.rx.wanted()).min(chunk.len());
                for (i, slot) in chunk.iter_mut().take(n).enumerate() {
                    let idx = cons.wrapping_add(i as u32) % ring::RING_SIZE;
                    *slot = self.page.load_u8(ring::RSP + idx as usize);
                }
                fence(Ordering::Release);
                self.page.store_u32(ring::RSP_CONS, cons.wrapping_add(n as u32));
                evtchn::send(self.port).map_err(|_| XsError::Transport)?;
                let (_, msg) = self.rx.push(chunk.get(..n).unwrap_or_default())?;
                if msg.is_some() {
                    return Ok(msg);
                }
            }
        }

        fn queue_event(&mut self, msg: &Message) {
            if let Some((path, token)) = msg.watch_event() {
                if self.events.len() < MAX_QUEUED_EVENTS {
                    self.events.push_back((path.into(), token.into()));
                }
            }
        }

        /// Sends one request and returns the payload of its reply.
        pub fn request(&mut self, op: Op, tx: Tx, parts: &[Part<'_>]) -> Result<Vec<u8>, XsError> {
            let req_id = self.next_req;
            self.next_req = self.next_req.wrapping_add(1);
            let bytes = wire::encode(op, req_id, tx.0, parts)?;
            let deadline = Self::deadline(REQUEST_TIMEOUT_NS)?;
            self.send_bytes(&bytes, deadline)?;
            loop {
                match self.poll_message()? {
                    Some(msg) if msg.op() == Some(Op::WatchEvent) => self.queue_event(&msg),
                    Some(msg) if msg.header.req_id == req_id => return msg.into_reply(op),
                    Some(_) => return Err(XsError::Protocol),
                    None => self.wait_event(deadline)?,
                }
            }
        }

        /// Reads `path`; `Ok(None)` if it does not exist.
        pub fn read(&mut self, tx: Tx, path: &str) -> Result<Option<Vec<u8>>, XsError> {
            wire::check_name(path)?;
            match self.request(Op::Read, tx, &[Part::Str(path)]) {
                Ok(v) => Ok(Some(v)),
                Err(XsError::Daemon(wire::Errno::NoEnt)) => Ok(None),
                Err(e) => Err(e),
            }
        }

        /// Writes `value` at `path`.
        pub fn write(&mut self, tx: Tx, path: &str, value: &[u8]) -> Result<(), XsError> {
            wire::check_name(path)?;
            self.request(Op::Write, tx, &[Part::Str(path), Part::Raw(value)]).map(|_| ())
        }

        /// Lists the children of `path`.
        pub fn directory(&mut self, tx: Tx, path: &str) -> Result<Vec<String>, XsError> {
            wire::check_name(path)?;
            let reply = self.request(Op::Directory, tx, &[Part::Str(path)])?;
            wire::directory_entries(&reply)
                .map(|n| core::str::from_utf8(n).map(String::from).map_err(|_| XsError::Protocol))
                .collect()
        }

        /// Removes `path` and its children; a missing path is not an error.
        pub fn rm(&mut self, tx: Tx, path: &str) -> Result<(), XsError> {
            wire::check_name(path)?;
            match self.request(Op::Rm, tx, &[Part::Str(path)]) {
                Ok(_) | Err(XsError::Daemon(wire::Errno::NoEnt)) => Ok(()),
                Err(e) => Err(e),
            }
        }

        /// Sets the permissions of `path` (the first entry names the owner).
        pub fn set_perms(&mut self, tx: Tx, path: &str, perms: &[Perm]) -> Result<(), XsError> {
            wire::check_name(path)?;
            let mut texts: Vec<String> = Vec::with_capacity(perms.len());
            for p in perms {
                let mut s = String::new();
                let (c, d) = match p {
                    Perm::None(d) => ('n', d),
                    Perm::Read(d) => ('r', d),
                    Perm::Write(d) => ('w', d),
                    Perm::Both(d) => ('b', d),
                };
                let _ = write!(s, "{c}{}", d.0);
                texts.push(s);
            }
            let mut parts = Vec::with_capacity(perms.len() + 1);
            parts.push(Part::Str(path));
            parts.extend(texts.iter().map(|t| Part::Str(t)));
            self.request(Op::SetPerms, tx, &parts).map(|_| ())
        }

        /// Starts a transaction.
        pub fn transaction_start(&mut self) -> Result<Tx, XsError> {
            let reply = self.request(Op::TransactionStart, Tx::NONE, &[Part::Str("")])?;
            let text = reply.split(|&b| b == 0).next().unwrap_or_default();
            let id = core::str::from_utf8(text)
                .ok()
                .and_then(|t| t.parse().ok())
                .ok_or(XsError::Protocol)?;
            Ok(Tx(id))
        }

        /// Commits (`commit`) or aborts a transaction. A commit may fail with
        /// `Daemon(Again)`: the caller retries the whole transaction.
        pub fn transaction_end(&mut self, tx: Tx, commit: bool) -> Result<(), XsError> {
            self.request(Op::TransactionEnd, tx, &[Part::Str(if commit { "T" } else { "F" })])
                .map(|_| ())
        }

        /// Registers a watch on `path` under `token`.
        pub fn watch(&mut self, path: &str, token: &str) -> Result<(), XsError> {
            wire::check_name(path)?;
            wire::check_name(token)?;
            self.request(Op::Watch, Tx::NONE, &[Part::Str(path), Part::Str(token)])?;
            self.watches.push((path.into(), token.into()));
            Ok(())
        }

        /// Removes a watch.
        pub fn unwatch(&mut self, path: &str, token: &str) -> Result<(), XsError> {
            wire::check_name(path)?;
            wire::check_name(token)?;
            self.watches.retain(|(p, t)| !(p == path && t == token));
            self.events.retain(|(_, t)| t != token);
            self.request(Op::Unwatch, Tx::NONE, &[Part::Str(path), Part::Str(token)]).map(|_| ())
        }

        /// Whether a watch on `path` with `token` is registered.
        pub fn is_watched(&self, path: &str, token: &str) -> bool {
            self.watches.iter().any(|(p, t)| p == path && t == token)
        }

        /// Waits for a watch event with `token` (`None`: forever); returns
        /// `Ok(false)` on timeout.
        pub fn wait_watch(
            &mut self,
            token: &str,
            timeout_ns: Option<u64>,
        ) -> Result<bool, XsError> {
            let deadline = match timeout_ns {
                Some(t) => Self::deadline(t)?,
                None => u64::MAX,
            };
            loop {
                if let Some(i) = self.events.iter().position(|(_, t)| t == token) {
                    self.events.remove(i);
                    return Ok(true);
                }
                match self.poll_message()? {
                    Some(msg) if msg.op() == Some(Op::WatchEvent) => self.queue_event(&msg),
                    Some(_) => return Err(XsError::Protocol),
                    None => match self.wait_event(deadline) {
                        Ok(()) => {}
                        Err(XsError::Timeout) => return Ok(false),
                        Err(e) => return Err(e),
                    },
                }
            }
        }
    }
}
