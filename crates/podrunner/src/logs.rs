//! The node's log endpoint, which the API server's `pods/log` reads (HTTPS on the port
//! the Node publishes as `kubeletEndpoint`):
//! `GET /containerLogs/{namespace}/{pod}/{container}` with `follow`, `tailLines` and
//! `limitBytes`. A followed log streams until its process has exited and the file is
//! read to the end. `timestamps` and `sinceSeconds` are ignored (the log file is the
//! process's raw output); `previous` is refused, as containers are never restarted.
//! The endpoint does not authenticate its clients.

use std::collections::HashMap;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::reflector::Store;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::task::JoinSet;

use crate::process;

/// How often a followed log is checked for more output.
const FOLLOW_POLL: Duration = Duration::from_millis(200);

/// What the endpoint reads: the pods (to find a pod's uid) and their directories.
#[derive(Clone)]
pub struct Logs {
    pub pods: Store<Pod>,
    pub state_dir: PathBuf,
}

impl std::fmt::Debug for Logs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Logs")
            .field("state_dir", &self.state_dir)
            .finish_non_exhaustive()
    }
}

/// Serves the endpoint on `listener` until dropped (connections end with it).
pub async fn serve(listener: tokio::net::TcpListener, tls: Arc<rustls::ServerConfig>, logs: Logs) {
    let app = Router::new()
        .route(
            "/containerLogs/{namespace}/{pod}/{container}",
            axum::routing::get(container_logs),
        )
        .with_state(logs);
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            Some(_) = connections.join_next() => continue,
        };
        let tcp = match accepted {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                tracing::warn!(error = %e, "log endpoint: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (acceptor, app) = (acceptor.clone(), app.clone());
        connections.spawn(async move {
            let handshake =
                tokio::time::timeout(std::time::Duration::from_secs(10), acceptor.accept(tcp));
            let Ok(Ok(tls)) = handshake.await else {
                return;
            };
            let service = hyper_util::service::TowerToHyperService::new(app);
            let mut builder =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            builder
                .http1()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(30));
            let _ = builder
                .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                .await;
        });
    }
}

fn refuse(code: StatusCode, message: String) -> Response {
    (code, message).into_response()
}

async fn container_logs(
    State(logs): State<Logs>,
    UrlPath((namespace, name, container)): UrlPath<(String, String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let pod = logs.pods.find(|p| {
        p.metadata.namespace.as_deref() == Some(namespace.as_str())
            && p.metadata.name.as_deref() == Some(name.as_str())
    });
    let Some(pod) = pod else {
        return refuse(
            StatusCode::NOT_FOUND,
            format!("pod {namespace}/{name} is not known to this node"),
        );
    };
    let known = pod
        .spec
        .iter()
        .flat_map(|s| &s.containers)
        .any(|c| c.name == container);
    // A name that is no plain file name (`../<uid>/compute`) never ran here: its log
    // path would be another pod's, or no pod's, file.
    if !known || api::validate::dns1123_label(&container).is_err() {
        return refuse(
            StatusCode::NOT_FOUND,
            format!("pod {namespace}/{name} has no container {container}"),
        );
    }
    if query.get("previous").is_some_and(|p| p == "true") {
        return refuse(
            StatusCode::BAD_REQUEST,
            format!("container {container} was never restarted: there is no previous log"),
        );
    }
    let number = |key: &str| query.get(key).and_then(|v| v.parse::<u64>().ok());
    let follow = query.get("follow").is_some_and(|f| f == "true" || f == "1");
    let dir = logs
        .state_dir
        .join(pod.metadata.uid.as_deref().unwrap_or_default());
    let path = process::log_path(&dir, &container);
    let start = match open_at(&path, number("tailLines")) {
        Ok(start) => start,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return refuse(
                StatusCode::BAD_REQUEST,
                format!("container {container} in pod {namespace}/{name} has not started"),
            );
        }
        Err(e) => return refuse(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let reader = Reader {
        path,
        dir,
        container,
        offset: start,
        remaining: number("limitBytes"),
        follow,
        file: None,
    };
    let body = Body::from_stream(futures_util::stream::unfold(reader, Reader::next));
    ([(header::CONTENT_TYPE, "text/plain")], body).into_response()
}

/// Where reading starts: the beginning, or the start of the last `tail` lines.
fn open_at(path: &Path, tail: Option<u64>) -> io::Result<u64> {
    let mut file = std::fs::File::open(path)?;
    match tail {
        None => Ok(0),
        Some(lines) => tail_offset(&mut file, lines),
    }
}

/// The offset of the first of the last `lines` lines (a final line without a newline
/// counts as one).
fn tail_offset(file: &mut std::fs::File, lines: u64) -> io::Result<u64> {
    let len = file.metadata()?.len();
    if lines == 0 {
        return Ok(len);
    }
    let mut buf = vec![0u8; 8192];
    let (mut pos, mut seen) = (len, 0);
    while pos > 0 {
        let n = usize::try_from(pos.min(buf.len() as u64)).unwrap_or(buf.len());
        pos -= n as u64;
        file.seek(SeekFrom::Start(pos))?;
        file.read_exact(&mut buf[..n])?;
        for i in (0..n).rev() {
            let after = pos + i as u64 + 1;
            if buf[i] == b'\n' && after != len {
                seen += 1;
                if seen == lines {
                    return Ok(after);
                }
            }
        }
    }
    Ok(0)
}

/// One log being read, maybe followed.
struct Reader {
    path: PathBuf,
    dir: PathBuf,
    container: String,
    offset: u64,
    remaining: Option<u64>,
    follow: bool,
    file: Option<tokio::fs::File>,
}

impl Reader {
    async fn next(mut self) -> Option<(io::Result<Bytes>, Self)> {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            if self.remaining == Some(0) {
                return None;
            }
            // Checked before reading, so output written just before the exit is read.
            let finished = !self.follow || !self.running();
            let read = self.read(&mut buf).await;
            match read {
                Ok(0) if finished => return None,
                Ok(0) => tokio::time::sleep(FOLLOW_POLL).await,
                Ok(n) => {
                    buf.truncate(n);
                    return Some((Ok(Bytes::from(buf)), self));
                }
                Err(e) => {
                    self.remaining = Some(0);
                    return Some((Err(e), self));
                }
            }
        }
    }

    async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.file.is_none() {
            let mut file = tokio::fs::File::open(&self.path).await?;
            file.seek(SeekFrom::Start(self.offset)).await?;
            self.file = Some(file);
        }
        let limit = self.remaining.map_or(buf.len(), |r| {
            buf.len().min(usize::try_from(r).unwrap_or(usize::MAX))
        });
        let Some(file) = self.file.as_mut() else {
            return Ok(0);
        };
        let n = file.read(&mut buf[..limit]).await?;
        self.offset += n as u64;
        if let Some(r) = &mut self.remaining {
            *r -= n as u64;
        }
        Ok(n)
    }

    fn running(&self) -> bool {
        process::record(&self.dir, &self.container).is_some_and(|r| process::alive(&r))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn tail_counts_lines_from_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let offset = |text: &str, n| {
            std::fs::write(&path, text).unwrap();
            let at = open_at(&path, Some(n)).unwrap() as usize;
            text[at..].to_owned()
        };
        assert_eq!(offset("a\nb\nc\n", 2), "b\nc\n");
        assert_eq!(offset("a\nb\nc", 2), "b\nc");
        assert_eq!(offset("a\nb\n", 5), "a\nb\n");
        assert_eq!(offset("a\nb\n", 0), "");
        assert_eq!(offset("", 3), "");
        let long: String = (0..5000).map(|i| format!("line {i}\n")).collect();
        assert_eq!(offset(&long, 2), "line 4998\nline 4999\n");
    }
}
