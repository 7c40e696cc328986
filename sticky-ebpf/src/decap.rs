//! DSR on a backend: strip the outer header of IPIP (IPv4 in IPv4) and IP6IP6 packets on the
//! backend's ingress, so the inner client → VIP packet reaches the VIP on `lo` as if it had
//! been routed there. What `tunl0`/`ip6tnl0` do, without the `ipip`/`ip6_tunnel` modules
//! (kernels without them exist: this project's own test machines). Like those devices it
//! accepts any outer source: the balancers' addresses are not known here.
//!
//! Only a plain outer header is stripped (IPv4 without options or fragments, IPv6 whose next
//! header is IPv6 itself) and only from frames addressed to this host; everything else goes
//! on untouched (`TCX_NEXT`, legacy tc's "unspecified", the same -1).

use aya_ebpf::{
    bindings::{
        BPF_F_ADJ_ROOM_FIXED_GSO, TC_ACT_OK, bpf_adj_room_mode::BPF_ADJ_ROOM_MAC,
        tcx_action_base::TCX_NEXT,
    },
    programs::TcContext,
};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
};

use crate::parse::{ETH_P_IP, ETH_P_IPV6, IPV4_FRAG_MASK, header};

const PROTO_IPIP: u8 = 4;
const PROTO_IPV6: u8 = 41;
const PACKET_HOST: u32 = 0;

/// The decapsulation, or `TCX_NEXT` for anything that is not a plain IPIP/IP6IP6 packet.
#[inline(always)]
pub fn decap(ctx: &TcContext) -> i32 {
    // SAFETY: `skb` points at the program's context for the whole run.
    if unsafe { (*ctx.skb.skb).pkt_type } != PACKET_HOST {
        return TCX_NEXT;
    }
    let outer = match outer_len(ctx) {
        Some(len) => len,
        None => return TCX_NEXT,
    };
    // Removes `outer` bytes after the Ethernet header; the inner packet keeps the frame's
    // protocol (same family). A GRO super-packet keeps its segment size.
    match ctx.adjust_room(
        -outer,
        BPF_ADJ_ROOM_MAC,
        u64::from(BPF_F_ADJ_ROOM_FIXED_GSO),
    ) {
        Ok(()) => TC_ACT_OK,
        Err(_) => TCX_NEXT,
    }
}

/// The outer header's length when the packet is IPIP or IP6IP6 we can strip.
#[inline(always)]
fn outer_len(ctx: &TcContext) -> Option<i32> {
    let eth = header::<EthHdr, _>(ctx, 0)?;
    match u16::from_be(eth.ether_type) {
        ETH_P_IP => {
            let ip = header::<Ipv4Hdr, _>(ctx, EthHdr::LEN)?;
            let plain = ip.vihl == 0x45
                && ip.proto == PROTO_IPIP
                && u16::from_be_bytes(ip.frags) & IPV4_FRAG_MASK == 0;
            // The inner header must be there and be IPv4 too.
            let inner = header::<Ipv4Hdr, _>(ctx, EthHdr::LEN + Ipv4Hdr::LEN)?;
            (plain && inner.vihl >> 4 == 4).then_some(Ipv4Hdr::LEN as i32)
        }
        ETH_P_IPV6 => {
            let ip = header::<Ipv6Hdr, _>(ctx, EthHdr::LEN)?;
            let inner = header::<Ipv6Hdr, _>(ctx, EthHdr::LEN + Ipv6Hdr::LEN)?;
            (ip.next_hdr == PROTO_IPV6 && inner.vcf[0] >> 4 == 6).then_some(Ipv6Hdr::LEN as i32)
        }
        _ => None,
    }
}
