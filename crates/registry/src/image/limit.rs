//! Byte budgets for pulls: a writer that refuses to grow a layer past its budget, and a
//! reader that refuses to unpack more than its budget.

use std::cell::Cell;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use tokio::io::AsyncWrite;

/// Passes writes to `inner` until `budget` bytes have gone through, then fails them.
#[derive(Debug)]
pub struct Writer<W> {
    inner: W,
    budget: u64,
    written: u64,
    exceeded: bool,
}

impl<W> Writer<W> {
    pub fn new(inner: W, budget: u64) -> Self {
        Self {
            inner,
            budget,
            written: 0,
            exceeded: false,
        }
    }

    pub fn written(&self) -> u64 {
        self.written
    }

    /// Whether a write was refused for going over the budget.
    pub fn exceeded(&self) -> bool {
        self.exceeded
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for Writer<W> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.written.saturating_add(buf.len() as u64) > this.budget {
            this.exceeded = true;
            return Poll::Ready(Err(io::Error::other("over the size limit")));
        }
        let poll = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = poll {
            this.written += n as u64;
        }
        poll
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Reads from `inner` until `budget` bytes have come through, then fails; [`Self::used`]
/// tells how many did, also after the reader was handed on.
#[derive(Debug)]
pub struct Reader<R> {
    inner: R,
    budget: u64,
    used: Rc<Cell<u64>>,
}

impl<R> Reader<R> {
    pub fn new(inner: R, budget: u64) -> Self {
        Self {
            inner,
            budget,
            used: Rc::new(Cell::new(0)),
        }
    }

    pub fn used(&self) -> Rc<Cell<u64>> {
        self.used.clone()
    }
}

impl<R: io::Read> io::Read for Reader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let used = self.used.get().saturating_add(n as u64);
        if used > self.budget {
            return Err(io::Error::other(format!(
                "the image unpacks to more than this node's limit of {} bytes",
                self.budget
            )));
        }
        self.used.set(used);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use tokio::io::AsyncWriteExt;

    use super::*;

    #[tokio::test]
    async fn the_writer_stops_at_its_budget() {
        let mut w = Writer::new(Vec::new(), 5);
        w.write_all(b"abc").await.unwrap();
        assert!(w.write_all(b"def").await.is_err());
        assert!(w.exceeded());
        assert_eq!(w.written(), 3);
    }

    #[test]
    fn the_reader_stops_at_its_budget() {
        let mut r = Reader::new(&b"0123456789"[..], 4);
        let used = r.used();
        let mut out = Vec::new();
        let err = r.read_to_end(&mut out).unwrap_err();
        assert!(err.to_string().contains("limit of 4 bytes"), "{err}");
        assert!(used.get() <= 4);
    }
}
