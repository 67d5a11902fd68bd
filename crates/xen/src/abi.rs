//! Numbers and structure layouts from Xen's public headers
//! (`xen/include/public/`), written out for this crate.
//!
//! Only what Portcullis uses is here. Layouts are x86-64 (`xen_ulong_t` is
//! 64 bits, `domid_t` 16). Offsets of shared structures are given as
//! constants because those structures are read and written through
//! volatile accesses, never as Rust references.

/// Hypercall numbers (`xen.h`, `__HYPERVISOR_*`).
pub mod hypercall {
    /// `memory_op`.
    pub const MEMORY_OP: u32 = 12;
    /// `xen_version`.
    pub const XEN_VERSION: u32 = 17;
    /// `console_io`.
    pub const CONSOLE_IO: u32 = 18;
    /// `grant_table_op`.
    pub const GRANT_TABLE_OP: u32 = 20;
    /// `sched_op`.
    pub const SCHED_OP: u32 = 29;
    /// `event_channel_op`.
    pub const EVENT_CHANNEL_OP: u32 = 32;
    /// `hvm_op`.
    pub const HVM_OP: u32 = 34;
}

/// The calling domain, in domain-id arguments (`DOMID_SELF`).
pub const DOMID_SELF: u16 = 0x7ff0;

/// Page size and shift of the guest-physical address space.
pub const PAGE_SIZE: usize = 4096;
/// `log2(PAGE_SIZE)`.
pub const PAGE_SHIFT: u32 = 12;

/// `elfnote.h`.
pub mod elfnote {
    /// Name of the guest OS.
    pub const GUEST_OS: u32 = 6;
    /// Version of the guest OS.
    pub const GUEST_VERSION: u32 = 7;
    /// Version of the Xen interface the guest expects.
    pub const XEN_VERSION: u32 = 5;
    /// 32-bit physical entry point for PVH.
    pub const PHYS32_ENTRY: u32 = 18;
}

/// `hvm/start_info.h`.
pub mod start_info {
    /// `XEN_HVM_START_MAGIC_VALUE` ("xEn3" with the top bit of each byte).
    pub const MAGIC: u32 = 0x336e_c578;
    /// Size of `struct hvm_start_info` (version 1).
    pub const SIZE: usize = 56;
    /// Offset of `version`.
    pub const VERSION: usize = 4;
    /// Offset of `nr_modules`.
    pub const NR_MODULES: usize = 12;
    /// Offset of `modlist_paddr`.
    pub const MODLIST_PADDR: usize = 16;
    /// Offset of `cmdline_paddr`.
    pub const CMDLINE_PADDR: usize = 24;
    /// Offset of `rsdp_paddr`.
    pub const RSDP_PADDR: usize = 32;
    /// Offset of `memmap_paddr` (version 1).
    pub const MEMMAP_PADDR: usize = 40;
    /// Offset of `memmap_entries` (version 1).
    pub const MEMMAP_ENTRIES: usize = 48;
    /// Size of `struct hvm_modlist_entry` (paddr, size, cmdline_paddr, reserved).
    pub const MODLIST_ENTRY_SIZE: usize = 32;
    /// Size of `struct hvm_memmap_table_entry` (addr, size, type, reserved).
    pub const MEMMAP_ENTRY_SIZE: usize = 24;
    /// E820 type of usable RAM.
    pub const MEMMAP_TYPE_RAM: u32 = 1;
}

/// `hvm/hvm_op.h` and `hvm/params.h`.
pub mod hvm {
    /// `HVMOP_get_param`.
    pub const GET_PARAM: u64 = 1;
    /// `HVM_PARAM_STORE_PFN`.
    pub const PARAM_STORE_PFN: u32 = 1;
    /// `HVM_PARAM_STORE_EVTCHN`.
    pub const PARAM_STORE_EVTCHN: u32 = 2;
    /// `HVM_PARAM_CONSOLE_PFN`.
    pub const PARAM_CONSOLE_PFN: u32 = 17;
    /// `HVM_PARAM_CONSOLE_EVTCHN`.
    pub const PARAM_CONSOLE_EVTCHN: u32 = 18;
}

/// `sched.h`.
pub mod sched {
    /// `SCHEDOP_yield`.
    pub const YIELD: u64 = 0;
    /// `SCHEDOP_shutdown`.
    pub const SHUTDOWN: u64 = 2;
    /// `SCHEDOP_poll`.
    pub const POLL: u64 = 3;
    /// `SHUTDOWN_poweroff`.
    pub const SHUTDOWN_POWEROFF: u32 = 0;
    /// `SHUTDOWN_crash`.
    pub const SHUTDOWN_CRASH: u32 = 3;
}

/// `event_channel.h`.
pub mod evtchn {
    /// `EVTCHNOP_bind_interdomain`.
    pub const BIND_INTERDOMAIN: u64 = 0;
    /// `EVTCHNOP_close`.
    pub const CLOSE: u64 = 3;
    /// `EVTCHNOP_send`.
    pub const SEND: u64 = 4;
    /// `EVTCHNOP_status`.
    pub const STATUS: u64 = 5;
    /// `EVTCHNOP_alloc_unbound`.
    pub const ALLOC_UNBOUND: u64 = 6;
    /// `EVTCHNSTAT_interdomain`: the port is bound to a remote domain's
    /// port (`EVTCHNSTAT_unbound`, 1, once that end closed or its domain
    /// was destroyed).
    pub const STAT_INTERDOMAIN: u32 = 2;
}

/// `memory.h`.
pub mod memory {
    /// `XENMEM_add_to_physmap`.
    pub const ADD_TO_PHYSMAP: u64 = 7;
    /// `XENMAPSPACE_shared_info`.
    pub const MAPSPACE_SHARED_INFO: u32 = 0;
    /// `XENMAPSPACE_grant_table`.
    pub const MAPSPACE_GRANT_TABLE: u32 = 1;
}

/// `grant_table.h` (version 1 entries).
pub mod gnttab {
    /// `GNTTABOP_map_grant_ref`.
    pub const MAP_GRANT_REF: u64 = 0;
    /// `GNTTABOP_unmap_grant_ref`.
    pub const UNMAP_GRANT_REF: u64 = 1;
    /// `GNTTABOP_query_size`.
    pub const QUERY_SIZE: u64 = 6;
    /// `GTF_permit_access`.
    pub const GTF_PERMIT_ACCESS: u16 = 1;
    /// `GTF_readonly`.
    pub const GTF_READONLY: u16 = 1 << 2;
    /// `GTF_reading`.
    pub const GTF_READING: u16 = 1 << 3;
    /// `GTF_writing`.
    pub const GTF_WRITING: u16 = 1 << 4;
    /// `GNTMAP_host_map`.
    pub const GNTMAP_HOST_MAP: u32 = 1 << 1;
    /// `GNTMAP_readonly`.
    pub const GNTMAP_READONLY: u32 = 1 << 2;
    /// `GNTST_okay`.
    pub const GNTST_OKAY: i16 = 0;
    /// Size of `grant_entry_v1_t` (flags u16, domid u16, frame u32).
    pub const ENTRY_V1_SIZE: usize = 8;
    /// References below this are reserved for the toolstack (console, xenstore).
    pub const NR_RESERVED_ENTRIES: u32 = 8;
}

/// `xen.h`: `struct shared_info` and `struct vcpu_info` on x86-64.
pub mod shared_info {
    /// Size of one `vcpu_info` (pending, mask, pending_sel, arch, time).
    pub const VCPU_INFO_SIZE: usize = 64;
    /// Offset of `vcpu_info.evtchn_upcall_pending`.
    pub const UPCALL_PENDING: usize = 0;
    /// Offset of `vcpu_info.evtchn_pending_sel`.
    pub const PENDING_SEL: usize = 8;
    /// Offset of `vcpu_info.time` (a `vcpu_time_info`).
    pub const VCPU_TIME: usize = 32;
    /// Offset of `evtchn_pending[64]` (after 32 `vcpu_info`s).
    pub const EVTCHN_PENDING: usize = 2048;
    /// Offset of `evtchn_mask[64]`.
    pub const EVTCHN_MASK: usize = 2560;
    /// Offset of `wc_version`.
    pub const WC_VERSION: usize = 3072;
    /// Offset of `wc_sec`.
    pub const WC_SEC: usize = 3076;
    /// Offset of `wc_nsec`.
    pub const WC_NSEC: usize = 3080;
    /// Offset of `wc_sec_hi` (x86-64).
    pub const WC_SEC_HI: usize = 3084;
    /// Ports covered by the 2-level event channel ABI on x86-64.
    pub const NR_EVENT_CHANNELS: u32 = 64 * 64;
}

/// `xen.h`: `struct vcpu_time_info`.
pub mod vcpu_time {
    /// Offset of `version`.
    pub const VERSION: usize = 0;
    /// Offset of `tsc_timestamp`.
    pub const TSC_TIMESTAMP: usize = 8;
    /// Offset of `system_time`.
    pub const SYSTEM_TIME: usize = 16;
    /// Offset of `tsc_to_system_mul`.
    pub const TSC_TO_SYSTEM_MUL: usize = 24;
    /// Offset of `tsc_shift` (an `int8_t`).
    pub const TSC_SHIFT: usize = 28;
}

/// `io/console.h`: `struct xencons_interface`.
pub mod console {
    /// Offset and size of `in[]`.
    pub const IN: usize = 0;
    /// Size of `in[]`.
    pub const IN_SIZE: u32 = 1024;
    /// Offset of `out[]`.
    pub const OUT: usize = 1024;
    /// Size of `out[]`.
    pub const OUT_SIZE: u32 = 2048;
    /// Offset of `in_cons`.
    pub const IN_CONS: usize = 3072;
    /// Offset of `in_prod`.
    pub const IN_PROD: usize = 3076;
    /// Offset of `out_cons`.
    pub const OUT_CONS: usize = 3080;
    /// Offset of `out_prod`.
    pub const OUT_PROD: usize = 3084;
}

/// `io/xs_wire.h`: `struct xenstore_domain_interface`.
pub mod xenstore {
    /// Offset of `req[]`.
    pub const REQ: usize = 0;
    /// Offset of `rsp[]`.
    pub const RSP: usize = 1024;
    /// Size of each ring (`XENSTORE_RING_SIZE`).
    pub const RING_SIZE: u32 = 1024;
    /// Offset of `req_cons`.
    pub const REQ_CONS: usize = 2048;
    /// Offset of `req_prod`.
    pub const REQ_PROD: usize = 2052;
    /// Offset of `rsp_cons`.
    pub const RSP_CONS: usize = 2056;
    /// Offset of `rsp_prod`.
    pub const RSP_PROD: usize = 2060;
}

/// `arch-x86/cpuid.h`: the hypervisor leaves.
pub mod cpuid {
    /// First leaf to probe for the Xen signature.
    pub const BASE: u32 = 0x4000_0000;
    /// Probe step (Xen may sit above a Viridian/KVM interface).
    pub const STEP: u32 = 0x100;
    /// Last base probed.
    pub const LAST: u32 = 0x4001_0000;
    /// "XenVMMXenVMM" as ebx, ecx, edx.
    pub const SIGNATURE: [u32; 3] = [0x566e_6558, 0x65584d4d, 0x4d4d566e];
}
