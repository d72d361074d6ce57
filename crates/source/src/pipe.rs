//! Hands RDB bytes from the async socket task to the blocking parser thread.

use std::io::Read;

use bytes::{Buf, Bytes};
use tokio::sync::mpsc;

/// A blocking `Read` over chunks sent through a bounded channel: the socket task never
/// waits on the parser except through the channel's bound, which is the backpressure.
pub struct ChannelReader {
    rx: mpsc::Receiver<Bytes>,
    cur: Bytes,
}

impl ChannelReader {
    pub fn new(rx: mpsc::Receiver<Bytes>) -> Self {
        ChannelReader {
            rx,
            cur: Bytes::new(),
        }
    }

    /// What was sent but not read: the rest of the current chunk and all queued chunks.
    pub fn into_leftover(mut self) -> Vec<Bytes> {
        let mut out = Vec::new();
        if !self.cur.is_empty() {
            out.push(std::mem::take(&mut self.cur));
        }
        while let Ok(b) = self.rx.try_recv() {
            out.push(b);
        }
        out
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.cur.is_empty() {
            match self.rx.blocking_recv() {
                Some(b) => self.cur = b,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len());
        buf[..n].copy_from_slice(&self.cur[..n]);
        self.cur.advance(n);
        Ok(n)
    }
}
