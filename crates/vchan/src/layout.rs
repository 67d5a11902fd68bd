//! The shared control page of a vchan and where its two rings live.
//!
//! The layout is the one libxenvchan uses (`xen/include/public/io/libxenvchan.h`,
//! placement rules from `tools/libs/vchan/init.c`):
//!
//! | offset | size | field |
//! | --- | --- | --- |
//! | 0 | 4 | `left.cons` |
//! | 4 | 4 | `left.prod` |
//! | 8 | 4 | `right.cons` |
//! | 12 | 4 | `right.prod` |
//! | 16 | 2 | `left_order` |
//! | 18 | 2 | `right_order` |
//! | 20 | 1 | `cli_live` |
//! | 21 | 1 | `srv_live` |
//! | 22 | 1 | `cli_notify` |
//! | 23 | 1 | `srv_notify` |
//! | 24 | 4 × n | `grants[]`: left ring's grants, then the right ring's |
//!
//! The left ring carries client-to-server data, the right ring server-to-client
//! data. Multi-byte fields are in the machine's byte order, which is little
//! endian on every architecture Xen supports.

use core::fmt;

use crate::shm::SharedMem;

/// Size of a Xen page.
pub const PAGE_SIZE: usize = 4096;
/// log2 of [`PAGE_SIZE`]; rings of this order or larger use granted pages.
pub const PAGE_SHIFT: u8 = 12;

/// Offset of `left.cons` (the server's read index).
pub const LEFT_CONS: usize = 0;
/// Offset of `left.prod` (the client's write index).
pub const LEFT_PROD: usize = 4;
/// Offset of `right.cons` (the client's read index).
pub const RIGHT_CONS: usize = 8;
/// Offset of `right.prod` (the server's write index).
pub const RIGHT_PROD: usize = 12;
/// Offset of `left_order` (`u16`).
pub const LEFT_ORDER: usize = 16;
/// Offset of `right_order` (`u16`).
pub const RIGHT_ORDER: usize = 18;
/// Offset of `cli_live` (`u8`).
pub const CLI_LIVE: usize = 20;
/// Offset of `srv_live` (`u8`).
pub const SRV_LIVE: usize = 21;
/// Offset of `cli_notify` (`u8`): notifications the server asked the client for.
pub const CLI_NOTIFY: usize = 22;
/// Offset of `srv_notify` (`u8`): notifications the client asked the server for.
pub const SRV_NOTIFY: usize = 23;
/// Offset of `grants[0]` (`u32` each).
pub const GRANTS: usize = 24;

/// Notify bit: "send me an event when you write data".
pub const NOTIFY_WRITE: u8 = 0x1;
/// Notify bit: "send me an event when you consume data".
pub const NOTIFY_READ: u8 = 0x2;

/// Live byte: that side has exited (or closed).
pub const LIVE_EXITED: u8 = 0;
/// Live byte: that side is connected.
pub const LIVE_CONNECTED: u8 = 1;
/// Live byte (`cli_live` only): the client has not connected yet.
pub const LIVE_WAITING: u8 = 2;

/// Smallest ring order: a 1 KiB ring inside the control page.
pub const MIN_ORDER: u8 = 10;
/// Largest ring order: a 1 MiB ring (256 granted pages).
pub const MAX_ORDER: u8 = 20;
/// Largest ring size a server may ask for.
pub const MAX_RING_SIZE: usize = 1 << MAX_ORDER;
/// Where an order-10 ring lives inside the control page.
pub const SMALL_RING_OFFSET: usize = 1024;
/// Where an order-11 ring lives inside the control page.
pub const LARGE_RING_OFFSET: usize = 2048;

const SMALL_ORDER: u8 = 10;
const LARGE_ORDER: u8 = 11;

/// One of the two rings of a vchan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    /// Client to server (`left`).
    Left,
    /// Server to client (`right`).
    Right,
}

impl Dir {
    /// Offset of this ring's consumer index in the control page.
    pub const fn cons_offset(self) -> usize {
        match self {
            Dir::Left => LEFT_CONS,
            Dir::Right => RIGHT_CONS,
        }
    }

    /// Offset of this ring's producer index in the control page.
    pub const fn prod_offset(self) -> usize {
        match self {
            Dir::Left => LEFT_PROD,
            Dir::Right => RIGHT_PROD,
        }
    }
}

/// Where a ring's bytes are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// Inside the control page, starting at this offset.
    InPage(usize),
    /// In `count` separately granted pages whose references are
    /// `grants[first..first + count]`.
    Granted {
        /// Index of the first grant reference in `grants[]`.
        first: usize,
        /// Number of pages.
        count: usize,
    },
}

/// The two ring orders of a vchan, validated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    left: u8,
    right: u8,
}

/// Why a pair of ring sizes or orders is unusable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayoutError {
    /// A requested ring size is above [`MAX_RING_SIZE`].
    SizeTooLarge,
    /// An order outside [`MIN_ORDER`]..=[`MAX_ORDER`].
    OrderOutOfRange(u16),
    /// Both rings would occupy the same part of the control page.
    RingsOverlap,
    /// The grant list would run into a ring inside the control page.
    GrantsOverlapRing,
}

impl fmt::Display for LayoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LayoutError::SizeTooLarge => write!(f, "ring size above {MAX_RING_SIZE} bytes"),
            LayoutError::OrderOutOfRange(o) => write!(f, "ring order {o} out of range"),
            LayoutError::RingsOverlap => f.write_str("both rings in the same part of the page"),
            LayoutError::GrantsOverlapRing => f.write_str("grant list overlaps an in-page ring"),
        }
    }
}

impl core::error::Error for LayoutError {}

/// Smallest page-granted order holding `size` bytes (at least a page).
fn pages_order(size: usize) -> u8 {
    let mut order = PAGE_SHIFT;
    while size > (1usize << order) {
        order += 1;
    }
    order
}

impl Geometry {
    /// Chooses ring orders for a server that needs at least `left_min` bytes
    /// of client-to-server ring and `right_min` of server-to-client ring.
    ///
    /// Same choice as `libxenvchan_server_init`: use the two in-page slots when
    /// both fit (the order-10 slot for one ring, order-11 for the other), else
    /// put whichever ring fits into the order-11 slot and grant pages for the
    /// other, else grant pages for both.
    pub fn for_sizes(left_min: usize, right_min: usize) -> Result<Self, LayoutError> {
        if left_min > MAX_RING_SIZE || right_min > MAX_RING_SIZE {
            return Err(LayoutError::SizeTooLarge);
        }
        let small = 1usize << SMALL_ORDER;
        let large = 1usize << LARGE_ORDER;
        let (left, right) = if left_min <= small && right_min <= large {
            (SMALL_ORDER, LARGE_ORDER)
        } else if left_min <= large && right_min <= small {
            (LARGE_ORDER, SMALL_ORDER)
        } else if left_min <= large {
            (LARGE_ORDER, pages_order(right_min))
        } else if right_min <= large {
            (pages_order(left_min), LARGE_ORDER)
        } else {
            (pages_order(left_min), pages_order(right_min))
        };
        Self::from_orders(left.into(), right.into())
    }

    /// Validates orders read from a control page (or chosen by a caller).
    ///
    /// Accepts what `init_gnt_cli` accepts, and also rejects a grant list that
    /// would run into an in-page ring (libxenvchan leaves that case to the
    /// server's good behaviour).
    pub fn from_orders(left: u16, right: u16) -> Result<Self, LayoutError> {
        let range = u16::from(MIN_ORDER)..=u16::from(MAX_ORDER);
        for order in [left, right] {
            if !range.contains(&order) {
                return Err(LayoutError::OrderOutOfRange(order));
            }
        }
        // Both values are at most MAX_ORDER, so they fit a u8.
        let geometry = Geometry { left: left as u8, right: right as u8 };
        if left == right && geometry.left < PAGE_SHIFT {
            return Err(LayoutError::RingsOverlap);
        }
        let grants_end = GRANTS + 4 * geometry.grant_count();
        let first_in_page = [Dir::Left, Dir::Right]
            .into_iter()
            .filter_map(|d| match geometry.placement(d) {
                Placement::InPage(off) => Some(off),
                Placement::Granted { .. } => None,
            })
            .min()
            .unwrap_or(PAGE_SIZE);
        if grants_end > first_in_page {
            return Err(LayoutError::GrantsOverlapRing);
        }
        Ok(geometry)
    }

    /// Order (log2 of the size) of a ring.
    pub const fn order(&self, dir: Dir) -> u8 {
        match dir {
            Dir::Left => self.left,
            Dir::Right => self.right,
        }
    }

    /// Size in bytes of a ring.
    pub const fn ring_size(&self, dir: Dir) -> usize {
        1 << self.order(dir)
    }

    /// Number of granted pages a ring uses (0 for an in-page ring).
    pub const fn pages(&self, dir: Dir) -> usize {
        let order = self.order(dir);
        if order >= PAGE_SHIFT {
            1 << (order - PAGE_SHIFT)
        } else {
            0
        }
    }

    /// Total number of entries in `grants[]`.
    pub const fn grant_count(&self) -> usize {
        self.pages(Dir::Left) + self.pages(Dir::Right)
    }

    /// Where a ring's bytes are.
    pub const fn placement(&self, dir: Dir) -> Placement {
        match self.order(dir) {
            SMALL_ORDER => Placement::InPage(SMALL_RING_OFFSET),
            LARGE_ORDER => Placement::InPage(LARGE_RING_OFFSET),
            _ => Placement::Granted {
                first: match dir {
                    Dir::Left => 0,
                    Dir::Right => self.pages(Dir::Left),
                },
                count: self.pages(dir),
            },
        }
    }

    /// Reads and validates the orders of a control page, each exactly once.
    pub fn read<M: SharedMem + ?Sized>(page: &M) -> Result<Self, LayoutError> {
        let left = page.load_u16(LEFT_ORDER);
        let right = page.load_u16(RIGHT_ORDER);
        Self::from_orders(left, right)
    }
}

/// Offset of `grants[index]` in the control page.
pub const fn grant_offset(index: usize) -> usize {
    GRANTS + 4 * index
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_choice_matches_libxenvchan() {
        let g = |l, r| Geometry::for_sizes(l, r).map(|g| (g.left, g.right));
        assert_eq!(g(0, 0), Ok((10, 11)));
        assert_eq!(g(1024, 2048), Ok((10, 11)));
        assert_eq!(g(2048, 1024), Ok((11, 10)));
        assert_eq!(g(2048, 2048), Ok((11, 12)));
        assert_eq!(g(4096, 2048), Ok((12, 11)));
        assert_eq!(g(4097, 1), Ok((13, 11)));
        assert_eq!(g(65536, 65536), Ok((16, 16)));
        assert_eq!(g(1 << 20, 1 << 20), Ok((20, 20)));
        assert_eq!(g((1 << 20) + 1, 0), Err(LayoutError::SizeTooLarge));
    }

    #[test]
    fn client_validation() {
        assert_eq!(Geometry::from_orders(9, 11), Err(LayoutError::OrderOutOfRange(9)));
        assert_eq!(Geometry::from_orders(12, 21), Err(LayoutError::OrderOutOfRange(21)));
        assert_eq!(Geometry::from_orders(10, 10), Err(LayoutError::RingsOverlap));
        assert_eq!(Geometry::from_orders(11, 11), Err(LayoutError::RingsOverlap));
        assert!(Geometry::from_orders(12, 12).is_ok());
        // 256 grants (1 KiB) after the header reach past offset 1024.
        assert_eq!(Geometry::from_orders(10, 20), Err(LayoutError::GrantsOverlapRing));
        assert!(Geometry::from_orders(11, 20).is_ok());
        assert!(Geometry::from_orders(10, 19).is_ok());
        // Both at the maximum: 512 grants end at 2072, inside the page.
        assert_eq!(Geometry::from_orders(20, 20).map(|g| g.grant_count()), Ok(512));
    }

    #[test]
    fn placement_left_grants_first() {
        let g = Geometry::from_orders(13, 12).unwrap();
        assert_eq!(g.placement(Dir::Left), Placement::Granted { first: 0, count: 2 });
        assert_eq!(g.placement(Dir::Right), Placement::Granted { first: 2, count: 1 });
        let g = Geometry::from_orders(11, 10).unwrap();
        assert_eq!(g.placement(Dir::Left), Placement::InPage(2048));
        assert_eq!(g.placement(Dir::Right), Placement::InPage(1024));
        assert_eq!(grant_offset(3), 36);
    }
}
