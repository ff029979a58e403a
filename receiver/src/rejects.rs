//! hyper's own empty 4xx answers to requests it cannot parse (two Content-Lengths,
//! too many headers, …) rewritten on the way out as problem+json: `ProblemIo`
//! sits between hyper and the socket; our handlers' 4xx always carry a body.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use episode_common::problem::{PROBLEM_CONTENT_TYPE, Slug};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::error::Refusal;

/// An IO stream whose writes of hyper's automatic 4xx answers get a problem body.
/// hyper (1.x) answers a request it cannot parse itself, before any handler runs,
/// with an empty `content-length: 0` 400/414/431 in one write, then closes; it has
/// no hook to shape that answer. Such a write — a whole 4xx head with
/// `content-length: 0` — is what this rewrites; nothing else is touched.
pub struct ProblemIo<T> {
    inner: T,
    /// A rewritten answer being written, and how much of it is written.
    pending: Option<(Vec<u8>, usize)>,
}

impl<T> ProblemIo<T> {
    pub fn new(inner: T) -> Self {
        Self {
            inner,
            pending: None,
        }
    }
}

/// The problem hyper's automatic answer with `status` stands for.
fn problem_for(status: u16) -> Refusal {
    match status {
        431 => Refusal::new(
            Slug::HeadersTooLarge,
            "the request has too many header fields or too large a header section",
        ),
        414 => Refusal::new(Slug::UriTooLong, "the request target is too long"),
        _ => Refusal::new(
            Slug::BadRequest,
            "the request cannot be parsed as HTTP/1.1 (e.g. two different or a negative Content-Length, or a malformed header)",
        ),
    }
}

/// `head` rewritten with a problem+json body, if it is one of hyper's automatic
/// answers to a request it could not parse.
pub fn rewrite(head: &[u8]) -> Option<Vec<u8>> {
    const EMPTY: &[u8] = b"\r\ncontent-length: 0\r\n";
    let status: u16 = std::str::from_utf8(head.strip_prefix(b"HTTP/1.1 4")?.get(..2)?)
        .ok()?
        .parse()
        .ok()
        .map(|n: u16| 400 + n)?;
    if !head.ends_with(b"\r\n\r\n") {
        return None;
    }
    let at = head.windows(EMPTY.len()).position(|w| w == EMPTY)?;
    let body = problem_for(status).to_json();
    let mut out = Vec::with_capacity(head.len() + body.len() + 64);
    out.extend_from_slice(&head[..at]);
    out.extend_from_slice(
        format!(
            "\r\ncontent-type: {PROBLEM_CONTENT_TYPE}\r\ncontent-length: {}\r\n",
            body.len()
        )
        .as_bytes(),
    );
    out.extend_from_slice(&head[at + EMPTY.len()..]);
    out.extend_from_slice(&body);
    Some(out)
}

impl<T: AsyncRead + Unpin> AsyncRead for ProblemIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> ProblemIo<T> {
    /// Writes the rewritten answer in `pending`; once all of it is out, reports
    /// the `len` bytes hyper handed over as written.
    fn poll_pending(&mut self, cx: &mut Context<'_>, len: usize) -> Poll<io::Result<usize>> {
        let (bytes, written) = self.pending.as_mut().expect("a rewritten answer");
        while *written < bytes.len() {
            match Pin::new(&mut self.inner).poll_write(cx, &bytes[*written..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => *written += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        self.pending = None;
        Poll::Ready(Ok(len))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ProblemIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.pending.is_none() {
            // Cheap test first: only a 4xx head is ever looked at.
            match buf
                .starts_with(b"HTTP/1.1 4")
                .then(|| rewrite(buf))
                .flatten()
            {
                Some(rewritten) => this.pending = Some((rewritten, 0)),
                None => return Pin::new(&mut this.inner).poll_write(cx, buf),
            }
        }
        // hyper calls again with the same buffer until it is reported written.
        this.poll_pending(cx, buf.len())
    }

    /// hyper writes vectored when the socket can (its head and body as separate
    /// slices); its automatic answer is then a single slice, the whole head.
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.pending.is_none() {
            let mut slices = bufs.iter().filter(|b| !b.is_empty());
            let rewritten = match (slices.next(), slices.next()) {
                (Some(only), None) if only.starts_with(b"HTTP/1.1 4") => rewrite(only),
                _ => None,
            };
            match rewritten {
                Some(rewritten) => this.pending = Some((rewritten, 0)),
                None => return Pin::new(&mut this.inner).poll_write_vectored(cx, bufs),
            }
        }
        let len = bufs.iter().map(|b| b.len()).sum();
        this.poll_pending(cx, len)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrites_only_an_empty_4xx_head() {
        let head = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\ndate: Sun, 06 Dec 2026 04:00:00 GMT\r\n\r\n";
        let out = String::from_utf8(rewrite(head).unwrap()).unwrap();
        let (head, body) = out.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 431 "), "{head}");
        assert!(
            head.contains("content-type: application/problem+json"),
            "{head}"
        );
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{head}"
        );
        assert!(head.contains("date: "), "{head}");
        let problem: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(
            (problem["type"].as_str(), problem["status"].as_u64()),
            (Some("headers-too-large"), Some(431))
        );
        let bad = rewrite(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n").unwrap();
        assert!(
            String::from_utf8(bad)
                .unwrap()
                .contains("\"type\":\"bad-request\"")
        );
        for untouched in [
            &b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"[..],
            b"HTTP/1.1 404 Not Found\r\ncontent-length: 51\r\n\r\n",
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n", // not a whole head
            b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n",
        ] {
            assert_eq!(
                rewrite(untouched),
                None,
                "{}",
                String::from_utf8_lossy(untouched)
            );
        }
    }

    #[tokio::test]
    async fn a_lone_head_slice_is_rewritten_and_other_writes_pass_through() {
        use tokio::io::AsyncWriteExt as _;
        let mut io = ProblemIo::new(Vec::new());
        let head = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n";
        let n = io.write_vectored(&[io::IoSlice::new(head)]).await.unwrap();
        assert_eq!(n, head.len(), "hyper is told its bytes were written");
        let ours = b"HTTP/1.1 404 Not Found\r\ncontent-length: 2\r\n\r\n";
        let n = io
            .write_vectored(&[io::IoSlice::new(ours), io::IoSlice::new(b"{}")])
            .await
            .unwrap();
        assert_eq!(n, ours.len() + 2);
        io.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            .await
            .unwrap();
        let out = String::from_utf8(io.inner).unwrap();
        let (rewritten, rest) = out.split_once("HTTP/1.1 404").unwrap();
        assert!(
            rewritten.contains("\"type\":\"bad-request\""),
            "{rewritten}"
        );
        assert_eq!(
            rest,
            " Not Found\r\ncontent-length: 2\r\n\r\n{}HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"
        );
    }
}
