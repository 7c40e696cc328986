//! After a `101`: both sockets leave HTTP (the client's hyper, the backend's our exchange)
//! and the bytes between them are never parsed again, spliced in the kernel (sockmap) or
//! copied.

use anyhow::Context as _;
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio::{io::AsyncWriteExt as _, net::TcpStream};
use tracing::debug;

use super::{
    io::Stream,
    splice::{self, Handoff, SharedSplicer},
};

/// A socket taken back from hyper: the stream, and what hyper (or the replay) read from it
/// but did not consume, which belongs to the peer.
fn take_back(upgraded: Upgraded) -> anyhow::Result<(TcpStream, Vec<u8>, u64)> {
    let parts = upgraded
        .downcast::<TokioIo<Stream>>()
        .map_err(|_| anyhow::anyhow!("upgraded connection of an unexpected type"))?;
    let stream = parts.io.into_inner();
    // In the order they arrived: what hyper read, what was ready for it, what the guard held.
    let mut pending = parts.read_buf.to_vec();
    pending.extend_from_slice(&stream.replay);
    pending.extend_from_slice(&stream.held);
    Ok((stream.tcp, pending, stream.read))
}

/// Carries an upgraded client ↔ backend pair to the end: first what was already read on
/// either side, then `--splice-after` bytes copied, then the splice (or the copy path).
/// `backend` is the backend's socket, what was read from it past the `101`'s head, and how
/// much was read from it in all.
pub async fn carry(
    client: OnUpgrade,
    backend: (TcpStream, Vec<u8>, u64),
    splicer: Option<SharedSplicer>,
    splice_after: Option<u64>,
) -> anyhow::Result<()> {
    let client = client.await.context("upgrade")?;
    let (mut client, to_backend, mut client_read) = take_back(client)?;
    let (mut backend, to_client, mut backend_read) = backend;
    backend.write_all(&to_backend).await?;
    client.write_all(&to_client).await?;
    let _ = client.set_nodelay(true);
    let Some(splicer) = splicer else {
        splice::copy(client, backend).await?;
        return Ok(());
    };
    if let Some(limit) = splice_after.filter(|&n| n > 0) {
        match splice::copy_until(&mut client, &mut backend, limit).await? {
            Handoff::Closed => return Ok(()),
            Handoff::Grown {
                client_read: c,
                backend_read: b,
            } => {
                client_read += c;
                backend_read += b;
            }
        }
    }
    if let Err((c, b, why)) =
        splice::splice(&splicer, client, backend, client_read, backend_read).await
    {
        debug!("copying instead of splicing: {why}");
        splice::copy(c, b).await?;
    }
    Ok(())
}
