//! What sticky's kernel programs and its userspace share: map names, the `#[repr(C)]` map
//! types, and the pure functions both sides must compute identically (the client hash, the
//! table lookup and the backend decision, [`choice`]).
#![no_std]

pub mod addr;
pub mod choice;
pub mod csum;
pub mod defaults;
pub mod hash;
pub mod maps;
pub mod sync;
pub mod trace;

pub use addr::Addr16;
pub use choice::{BackendState, Choice, Reason, View, choose, client_key};
pub use hash::{client_hash, table_slot};
