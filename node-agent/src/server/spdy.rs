//! SPDY/3.1 framing, as much of it as `kubectl port-forward` (served here) and the
//! runtime's remotecommand streams (a client here, `remotecommand`) use: frames
//! (control and data), and header blocks (name/value pairs in one zlib stream per
//! direction, primed with the dictionary the SPDY/3 specification defines).
//!
//! No flow control: kubectl's SPDY library does not enforce windows, and WINDOW_UPDATE
//! frames are read and ignored. It must not know what the streams carry
//! (`portforward` does).

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// The SPDY/3 header-compression dictionary (specification section 2.6.10.1).
const DICTIONARY: &[u8] = include_bytes!("spdy3.dict");
const VERSION: u16 = 3;

pub const FLAG_FIN: u8 = 0x01;
pub const SYN_STREAM: u16 = 1;
pub const SYN_REPLY: u16 = 2;
pub const RST_STREAM: u16 = 3;
pub const PING: u16 = 6;
pub const GOAWAY: u16 = 7;
pub const HEADERS: u16 = 8;
/// The largest frame payload accepted (the field has 24 bits; kubectl sends far less).
const MAX_PAYLOAD: usize = 1 << 24;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("SPDY stream read failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("SPDY protocol error: {0}")]
    Protocol(&'static str),
    #[error("SPDY header block cannot be decompressed: {0}")]
    Inflate(#[from] flate2::DecompressError),
    #[error("SPDY header block cannot be compressed: {0}")]
    Deflate(#[from] flate2::CompressError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One frame as read.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    Control { kind: u16, flags: u8, data: Vec<u8> },
    Data { stream: u32, flags: u8, data: Vec<u8> },
}

/// Reads the next frame; `None` at a clean end of the connection.
pub async fn read_frame(r: &mut (impl AsyncRead + Unpin)) -> Result<Option<Frame>> {
    let mut head = [0u8; 8];
    match r.read_exact(&mut head).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let word = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
    let flags = head[4];
    let len = u32::from_be_bytes([0, head[5], head[6], head[7]]) as usize;
    if len > MAX_PAYLOAD {
        return Err(Error::Protocol("frame too large"));
    }
    let mut data = vec![0u8; len];
    r.read_exact(&mut data).await?;
    Ok(Some(if word & 0x8000_0000 != 0 {
        if (word >> 16) as u16 & 0x7fff != VERSION {
            return Err(Error::Protocol("not SPDY version 3"));
        }
        Frame::Control { kind: word as u16, flags, data }
    } else {
        Frame::Data { stream: word, flags, data }
    }))
}

/// A task that writes the frames sent to it in order (one writer per connection, so
/// frames never interleave), and shuts the write side down once every sender is gone
/// or a write fails.
pub fn writer(mut wr: impl AsyncWrite + Unpin + Send + 'static) -> (mpsc::Sender<Vec<u8>>, JoinHandle<()>) {
    let (out, mut frames) = mpsc::channel::<Vec<u8>>(64);
    let task = tokio::spawn(async move {
        while let Some(frame) = frames.recv().await {
            if wr.write_all(&frame).await.is_err() {
                break;
            }
        }
        let _ = wr.shutdown().await;
    });
    (out, task)
}

/// Encodes a control frame.
pub fn control(kind: u16, flags: u8, data: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(8 + data.len());
    f.extend_from_slice(&(0x8000 | VERSION).to_be_bytes());
    f.extend_from_slice(&kind.to_be_bytes());
    f.push(flags);
    f.extend_from_slice(&(data.len() as u32).to_be_bytes()[1..]);
    f.extend_from_slice(data);
    f
}

/// Encodes a data frame.
pub fn data(stream: u32, flags: u8, data: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(8 + data.len());
    f.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    f.push(flags);
    f.extend_from_slice(&(data.len() as u32).to_be_bytes()[1..]);
    f.extend_from_slice(data);
    f
}

/// A SYN_STREAM opening stream `id` (no associated stream, lowest priority) with the
/// compressed header block `headers` (from [`HeaderWriter::write`]).
pub fn syn_stream(id: u32, headers: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(10 + headers.len());
    body.extend_from_slice(&(id & 0x7fff_ffff).to_be_bytes());
    body.extend_from_slice(&0u32.to_be_bytes());
    body.extend_from_slice(&[0, 0]);
    body.extend_from_slice(headers);
    control(SYN_STREAM, 0, &body)
}

/// The stream id at the start of a control frame's data.
pub fn stream_id(data: &[u8]) -> Option<u32> {
    data.get(..4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) & 0x7fff_ffff)
}

/// Decompresses the header blocks one peer sends (one zlib stream for the session).
pub struct HeaderReader(Decompress);

impl Default for HeaderReader {
    fn default() -> Self {
        Self(Decompress::new(true))
    }
}

impl HeaderReader {
    /// The name/value pairs of one header block (names are lower case in SPDY).
    pub fn read(&mut self, block: &[u8]) -> Result<Vec<(String, String)>> {
        let mut out = Vec::with_capacity(block.len() * 4);
        let mut input = block;
        loop {
            out.reserve(1024);
            let before = self.0.total_in();
            match self.0.decompress_vec(input, &mut out, FlushDecompress::Sync) {
                Ok(_) => {}
                Err(e) if e.needs_dictionary().is_some() => {
                    self.0.set_dictionary(DICTIONARY)?;
                }
                Err(e) => return Err(e.into()),
            }
            input = &input[(self.0.total_in() - before) as usize..];
            if input.is_empty() && out.len() < out.capacity() {
                break;
            }
        }
        parse_pairs(&out).ok_or(Error::Protocol("malformed header block"))
    }
}

fn parse_pairs(mut b: &[u8]) -> Option<Vec<(String, String)>> {
    let mut take = |n: usize| -> Option<&[u8]> {
        let (h, t) = (b.get(..n)?, b.get(n..)?);
        b = t;
        Some(h)
    };
    let num = |s: &[u8]| u32::from_be_bytes([s[0], s[1], s[2], s[3]]) as usize;
    let count = num(take(4)?);
    let mut pairs = Vec::with_capacity(count.min(64));
    for _ in 0..count {
        let n = num(take(4)?);
        let name = String::from_utf8_lossy(take(n)?).into_owned();
        let n = num(take(4)?);
        let value = String::from_utf8_lossy(take(n)?).into_owned();
        pairs.push((name, value));
    }
    Some(pairs)
}

/// Compresses the header blocks this side sends.
pub struct HeaderWriter(Compress);

impl Default for HeaderWriter {
    fn default() -> Self {
        let mut c = Compress::new(Compression::default(), true);
        // A fresh compressor always takes a dictionary.
        let _ = c.set_dictionary(DICTIONARY);
        Self(c)
    }
}

impl HeaderWriter {
    /// One compressed header block, flushed so the peer can read it at once.
    pub fn write(&mut self, pairs: &[(&str, &str)]) -> Result<Vec<u8>> {
        let mut raw = Vec::new();
        raw.extend_from_slice(&(pairs.len() as u32).to_be_bytes());
        for (n, v) in pairs {
            raw.extend_from_slice(&(n.len() as u32).to_be_bytes());
            raw.extend_from_slice(n.as_bytes());
            raw.extend_from_slice(&(v.len() as u32).to_be_bytes());
            raw.extend_from_slice(v.as_bytes());
        }
        let mut out = Vec::with_capacity(raw.len() + 64);
        let mut input = &raw[..];
        loop {
            out.reserve(256);
            let before = self.0.total_in();
            let status = self.0.compress_vec(input, &mut out, FlushCompress::Sync)?;
            input = &input[(self.0.total_in() - before) as usize..];
            if input.is_empty() && out.len() < out.capacity() || status == Status::StreamEnd {
                return Ok(out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dictionary_is_the_one_kubectl_names() {
        // kubectl 1.32's header blocks name their dictionary by this Adler-32.
        let adler = Compress::new(Compression::default(), true).set_dictionary(DICTIONARY).unwrap();
        assert_eq!((DICTIONARY.len(), adler), (1423, 0xe3c6_a7c2));
    }

    #[test]
    fn kubectls_first_syn_stream_decodes() {
        // Captured from `kubectl port-forward` (1.32): SYN_STREAM 1, the error stream.
        let frame: &[u8] = &[
            0x80, 0x03, 0x00, 0x01, 0x00, 0x00, 0x00, 0x3d, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
            0x78, 0xf9, 0xe3, 0xc6, 0xa7, 0xc2, 0x02, 0x25, 0x3a, 0x70, 0x3a, 0x2b, 0x29, 0x4a, 0x4d, 0xcc, 0x85, 0x16,
            0x25, 0xac, 0xa9, 0xa0, 0x80, 0x86, 0x14, 0xcb, 0x45, 0xa0, 0x24, 0xcc, 0x64, 0x61, 0xc0, 0xc0, 0xc0, 0xc0,
            0x59, 0x04, 0x89, 0xc4, 0x4c, 0x50, 0xe2, 0x66, 0x34, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff,
        ];
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let f = rt.block_on(read_frame(&mut &frame[..])).unwrap().unwrap();
        let Frame::Control { kind: SYN_STREAM, data, .. } = f else { panic!("{f:?}") };
        assert_eq!(stream_id(&data), Some(1));
        let headers = HeaderReader::default().read(&data[10..]).unwrap();
        let get = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str());
        assert_eq!(
            (get("streamtype"), get("port"), get("requestid")),
            (Some("error"), Some("80"), Some("0")),
            "{headers:?}"
        );
    }

    #[test]
    fn our_header_blocks_read_back() {
        let (mut w, mut r) = (HeaderWriter::default(), HeaderReader::default());
        for _ in 0..3 {
            let block = w.write(&[("streamtype", "data"), ("port", "8080")]).unwrap();
            assert_eq!(r.read(&block).unwrap(), [("streamtype".into(), "data".into()), ("port".into(), "8080".into())]);
        }
        assert_eq!(r.read(&w.write(&[]).unwrap()).unwrap(), []);
    }
}
