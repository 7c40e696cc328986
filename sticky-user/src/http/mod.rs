//! HTTP/1.x heads, the one place the product reads or writes them: request heads (the
//! proxy, the metrics endpoint), the status lines of responses (health checks, the splice
//! decision, cookie insertion), reading a head from a socket within a size limit and a
//! deadline, and writing simple requests and responses. httparse does the parsing.

#[cfg(test)]
pub(crate) mod fuzz;
pub mod read;
pub mod request;
pub mod response;
pub mod write;

pub use read::ReadError;
pub use request::{HeadError, MAX_HEADERS, Part, RequestHead, header_slots, is_token};
pub use response::{StatusError, StatusLine, status_line};
pub use write::response_status;
