//! The control socket: requests go to the daemon loop, answers come back.

use super::*;

/// Accepts control connections; each request goes to the daemon loop and back.
pub(super) fn serve_control(
    instance: &str,
    requests: mpsc::Sender<(Request, oneshot::Sender<Response>)>,
) -> anyhow::Result<JoinHandle<()>> {
    let path = control::socket_path(instance);
    // We hold the instance lock: a socket file here is a crashed daemon's leftover.
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).with_context(|| format!("bind {}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("chmod 0600 {}", path.display()))?;
    Ok(tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let requests = requests.clone();
            tokio::spawn(async move {
                if let Err(e) = control_connection(stream, requests).await {
                    warn!("control connection: {e:#}");
                }
            });
        }
    }))
}

pub(super) async fn control_connection(
    stream: UnixStream,
    requests: mpsc::Sender<(Request, oneshot::Sender<Response>)>,
) -> anyhow::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read.take(control::MAX_REQUEST as u64 + 2));
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = tokio::time::timeout(Duration::from_secs(30), reader.read_until(b'\n', &mut line))
            .await
            .context("idle control connection")??;
        if n == 0 {
            return Ok(());
        }
        let response = match std::str::from_utf8(&line) {
            Err(_) => Response::err("malformed request: not UTF-8"),
            Ok(text) => match control::parse_request(text.trim_end_matches(['\n', '\r'])) {
                Ok(request) => {
                    let (tx, rx) = oneshot::channel();
                    requests
                        .send((request, tx))
                        .await
                        .context("daemon loop gone")?;
                    rx.await.context("daemon loop dropped the request")?
                }
                Err(message) => Response::err(message),
            },
        };
        let mut out = serde_json::to_string(&response)?;
        out.push('\n');
        write.write_all(out.as_bytes()).await?;
    }
}
