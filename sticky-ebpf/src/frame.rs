//! What parsing needs of a packet, whichever hook it arrived on: tc (an skb) or XDP (a frame).

use aya_ebpf::programs::{TcContext, XdpContext};

pub trait Frame {
    /// Start of the packet's linear data.
    fn data(&self) -> usize;
    /// End of the linear data (the verifier's bound).
    fn data_end(&self) -> usize;
    /// The packet's whole length (an skb's may exceed its linear data).
    fn len(&self) -> u32;
}

impl Frame for TcContext {
    #[inline(always)]
    fn data(&self) -> usize {
        TcContext::data(self)
    }

    #[inline(always)]
    fn data_end(&self) -> usize {
        TcContext::data_end(self)
    }

    #[inline(always)]
    fn len(&self) -> u32 {
        TcContext::len(self)
    }
}

impl Frame for XdpContext {
    #[inline(always)]
    fn data(&self) -> usize {
        XdpContext::data(self)
    }

    #[inline(always)]
    fn data_end(&self) -> usize {
        XdpContext::data_end(self)
    }

    #[inline(always)]
    fn len(&self) -> u32 {
        (XdpContext::data_end(self) - XdpContext::data(self)) as u32
    }
}
