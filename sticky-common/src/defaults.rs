//! Map sizes: the defaults the eBPF object is compiled with (userspace sizes the resizable
//! maps from its configuration at load time, falling back to these) and the fixed limits the
//! configuration is checked against.

/// Maglev table slots, a prime; the table map holds two tables back to back.
pub const DEFAULT_TABLE_SIZE: u32 = 65_537;
/// Largest table: 2 × this many u32 slots stay well under a few MiB of map memory.
pub const MAX_TABLE_SIZE: u32 = 1_000_003;
/// Connection-tracking entries for established flows (two per connection).
pub const DEFAULT_MAX_FLOWS: u32 = 262_144;
/// Entries for handshakes in progress (two per connection): 64k connections opening at once.
pub const DEFAULT_MAX_NEW_FLOWS: u32 = 131_072;
/// Client-affinity entries.
pub const DEFAULT_MAX_CLIENTS: u32 = 131_072;
/// Smallest flow or affinity map userspace accepts.
pub const MIN_MAP_ENTRIES: u32 = 64;
/// VIPs one instance balances: the VIP map's fixed size.
pub const MAX_VIPS: u32 = 64;
/// Client key prefix lengths: the whole address, each client on its own.
pub const DEFAULT_AFFINITY_PREFIX_V4: u8 = 32;
pub const DEFAULT_AFFINITY_PREFIX_V6: u8 = 128;
/// A UDP flow's idle timeout: conntrack's for a UDP stream (`nf_conntrack_udp_timeout_stream`).
pub const DEFAULT_UDP_TIMEOUT_NS: u64 = 120_000_000_000;
