//! Event channels: allocating, binding, signalling, asking their state,
//! closing, and waiting with `SCHEDOP_poll`.
//!
//! This platform takes no interrupts. A guest waits for events by polling
//! the ports it cares about; Xen blocks the vCPU until one is pending or the
//! timeout passes. Pending bits live in `shared_info` and are cleared here
//! after they are seen.

use portcullis_vchan::{DomId, Port};

use crate::abi::{self, evtchn as op, shared_info as shi};
use crate::hypercall::{self, HypercallArg, XenError, XenResult};
use crate::xen;

/// Allocates a port that `remote` may bind to.
pub fn alloc_unbound(remote: DomId) -> XenResult<Port> {
    #[repr(C)]
    struct AllocUnbound {
        dom: u16,
        remote_dom: u16,
        port: u32,
    }
    // SAFETY: `struct evtchn_alloc_unbound` (event_channel.h): domid_t dom,
    // domid_t remote_dom, evtchn_port_t port (8 bytes); Xen writes `port`.
    unsafe impl HypercallArg for AllocUnbound {
        const NR: u32 = abi::hypercall::EVENT_CHANNEL_OP;
        const CMD: u64 = op::ALLOC_UNBOUND;
    }
    const _: () = assert!(core::mem::size_of::<AllocUnbound>() == 8);
    let mut a = AllocUnbound { dom: abi::DOMID_SELF, remote_dom: remote.0, port: 0 };
    hypercall::op(&mut a)?;
    Ok(Port(a.port))
}

/// Binds a local port to `remote_port` of domain `remote`.
pub fn bind_interdomain(remote: DomId, remote_port: Port) -> XenResult<Port> {
    #[repr(C)]
    struct BindInterdomain {
        remote_dom: u16,
        _pad: u16,
        remote_port: u32,
        local_port: u32,
    }
    // SAFETY: `struct evtchn_bind_interdomain` (event_channel.h): domid_t
    // remote_dom, 2 bytes of padding, evtchn_port_t remote_port and
    // local_port (12 bytes); Xen writes `local_port`.
    unsafe impl HypercallArg for BindInterdomain {
        const NR: u32 = abi::hypercall::EVENT_CHANNEL_OP;
        const CMD: u64 = op::BIND_INTERDOMAIN;
    }
    const _: () = assert!(core::mem::size_of::<BindInterdomain>() == 12);
    let mut b = BindInterdomain {
        remote_dom: remote.0,
        _pad: 0,
        remote_port: remote_port.0,
        local_port: 0,
    };
    hypercall::op(&mut b)?;
    Ok(Port(b.local_port))
}

/// `EVTCHNOP_status` of our `port`: its `EVTCHNSTAT_*` state.
pub fn status(port: Port) -> XenResult<u32> {
    #[repr(C)]
    struct Status {
        dom: u16,
        _pad: u16,
        port: u32,
        status: u32,
        vcpu: u32,
        detail: [u32; 2],
    }
    // SAFETY: `struct evtchn_status` (event_channel.h): domid_t dom, 2
    // bytes of padding, evtchn_port_t port (in), uint32_t status, uint32_t
    // vcpu, and an 8-byte union of the binding's details aligned to 4 (out;
    // 24 bytes). Xen writes only within the struct.
    unsafe impl HypercallArg for Status {
        const NR: u32 = abi::hypercall::EVENT_CHANNEL_OP;
        const CMD: u64 = op::STATUS;
    }
    const _: () = assert!(core::mem::size_of::<Status>() == 24);
    let mut s =
        Status { dom: abi::DOMID_SELF, _pad: 0, port: port.0, status: 0, vcpu: 0, detail: [0; 2] };
    hypercall::op(&mut s)?;
    Ok(s.status)
}

/// `struct evtchn_send`: one port.
#[repr(C)]
struct Send {
    port: u32,
}

// SAFETY: `struct evtchn_send` (event_channel.h): one evtchn_port_t (uint32_t),
// read only.
unsafe impl HypercallArg for Send {
    const NR: u32 = abi::hypercall::EVENT_CHANNEL_OP;
    const CMD: u64 = op::SEND;
}
const _: () = assert!(core::mem::size_of::<Send>() == 4);

/// `struct evtchn_close`: one port.
#[repr(C)]
struct Close {
    port: u32,
}

// SAFETY: `struct evtchn_close` (event_channel.h): one evtchn_port_t
// (uint32_t), read only.
unsafe impl HypercallArg for Close {
    const NR: u32 = abi::hypercall::EVENT_CHANNEL_OP;
    const CMD: u64 = op::CLOSE;
}
const _: () = assert!(core::mem::size_of::<Close>() == 4);

/// Signals the other end of `port`.
pub fn send(port: Port) -> XenResult<()> {
    hypercall::op(&mut Send { port: port.0 }).map(|_| ())
}

/// Closes `port`.
pub fn close(port: Port) -> XenResult<()> {
    hypercall::op(&mut Close { port: port.0 }).map(|_| ())
}

/// Most ports one poll may name (Xen refuses more than 128).
pub const MAX_POLL_PORTS: usize = 128;

/// `SCHEDOP_poll`: blocks until one of `ports` is pending or Xen system
/// time reaches `deadline_ns` (0 = no deadline).
pub fn poll(ports: &[Port], deadline_ns: u64) -> XenResult<()> {
    if ports.len() > MAX_POLL_PORTS {
        return Err(XenError(-22));
    }
    let mut list = [0u32; MAX_POLL_PORTS];
    for (slot, p) in list.iter_mut().zip(ports) {
        *slot = p.0;
    }
    #[repr(C)]
    struct SchedPoll<'a> {
        ports: &'a [u32; MAX_POLL_PORTS],
        nr_ports: u32,
        _pad: u32,
        timeout: u64,
    }
    // SAFETY: `struct sched_poll` (sched.h): a guest handle (a 64-bit
    // pointer; a reference has that layout and is never null), unsigned int
    // nr_ports, 4 bytes of padding, uint64_t timeout (24 bytes). Xen reads
    // `nr_ports` entries of `ports`; `nr_ports <= MAX_POLL_PORTS` (checked
    // above) and the reference keeps the array alive for the value's
    // lifetime. Xen writes nothing back.
    unsafe impl HypercallArg for SchedPoll<'_> {
        const NR: u32 = abi::hypercall::SCHED_OP;
        const CMD: u64 = abi::sched::POLL;
    }
    const _: () = assert!(core::mem::size_of::<SchedPoll<'static>>() == 24);
    let mut p =
        SchedPoll { ports: &list, nr_ports: ports.len() as u32, _pad: 0, timeout: deadline_ns };
    hypercall::op(&mut p).map(|_| ())
}

/// Clears `port`'s pending bit; returns whether it was set.
pub fn take_pending(port: Port) -> bool {
    if port.0 >= shi::NR_EVENT_CHANNELS {
        return false;
    }
    match xen::shared_info() {
        Some(si) => {
            si.test_and_clear_bit(shi::EVTCHN_PENDING + 8 * (port.0 / 64) as usize, port.0 % 64)
        }
        None => false,
    }
}

/// Waits until one of `ports` is pending (clearing and returning it) or
/// `timeout_ns` of system time passes (`None` forever). Returns `Ok(None)`
/// on timeout.
pub fn wait_any(ports: &[Port], timeout_ns: Option<u64>) -> XenResult<Option<Port>> {
    let start = xen::system_time_ns().ok_or(XenError::NO_XEN)?;
    let deadline = match timeout_ns {
        Some(t) => start.saturating_add(t).max(1),
        None => 0,
    };
    loop {
        if let Some(&p) = ports.iter().find(|&&p| take_pending(p)) {
            return Ok(Some(p));
        }
        if deadline != 0 && xen::system_time_ns().unwrap_or(u64::MAX) >= deadline {
            return Ok(None);
        }
        poll(ports, deadline)?;
    }
}
