//! `GET /containerLogs/{ns}/{pod}/{container}`: a container's CRI log file, read the way
//! the upstream kubelet serves it. The runtime writes one record per line,
//! `2016-10-06T00:17:09.669794202Z stdout F text` (`P` instead of `F`: a partial line
//! that the next record continues); the client gets the text (`F` adds the newline),
//! with the record's timestamp in front under `timestamps`.
//!
//! `tailLines` starts that many lines before the end, `sinceSeconds`/`sinceTime` drop
//! older records, `limitBytes` stops after that many bytes, `previous` reads the
//! instance before the current one, and `follow` keeps sending what is appended until
//! the client goes, the container stops or it is replaced by a new instance.
//!
//! It must not parse anything but the CRI log format, nor find files itself: the
//! `ContainerLocator` names them.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::Frame;
use jiff::Timestamp;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::mpsc;

use super::{Body, ContainerLocator, flag, locate_error, text};

/// How often a follow looks for appended records, and how many polls go between two
/// checks that the container still runs.
const FOLLOW_POLL: Duration = Duration::from_millis(200);
const POLLS_PER_CHECK: u32 = 5;

/// The query of a log request, as the API server's `PodLogOptions` passes it on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogOptions {
    pub follow: bool,
    pub previous: bool,
    pub timestamps: bool,
    pub tail_lines: Option<u64>,
    pub since: Option<Timestamp>,
    pub limit_bytes: Option<u64>,
}

impl LogOptions {
    /// Reads the options from a query; the error says which parameter is wrong.
    pub fn from_query(q: &HashMap<String, String>) -> Result<Self, String> {
        let num = |k: &str| -> Result<Option<i64>, String> {
            q.get(k)
                .filter(|v| !v.is_empty())
                .map(|v| v.parse::<i64>().map_err(|_| format!("{k} must be an integer, got {v:?}")))
                .transpose()
        };
        let non_negative = |k: &str| -> Result<Option<u64>, String> {
            num(k)?.map(|n| u64::try_from(n).map_err(|_| format!("{k} must not be negative"))).transpose()
        };
        let since_time = q
            .get("sinceTime")
            .filter(|v| !v.is_empty())
            .map(|v| v.parse::<Timestamp>().map_err(|e| format!("sinceTime {v:?} is not an RFC 3339 time: {e}")))
            .transpose()?;
        let since = match (num("sinceSeconds")?, since_time) {
            (Some(_), Some(_)) => return Err("at most one of sinceTime or sinceSeconds may be specified".into()),
            (Some(s), None) if s < 1 => return Err("sinceSeconds must be greater than 0".into()),
            (Some(s), None) => Some(
                Timestamp::now()
                    .checked_sub(jiff::SignedDuration::from_secs(s))
                    .map_err(|e| format!("sinceSeconds {s}: {e}"))?,
            ),
            (None, t) => t,
        };
        Ok(Self {
            follow: flag(q, "follow"),
            previous: flag(q, "previous"),
            timestamps: flag(q, "timestamps"),
            tail_lines: non_negative("tailLines")?,
            since,
            limit_bytes: non_negative("limitBytes")?,
        })
    }
}

/// One record of a CRI log file.
#[derive(Debug, PartialEq, Eq)]
pub struct Record<'a> {
    pub time: &'a str,
    pub stream: &'a str,
    pub partial: bool,
    pub content: &'a [u8],
}

/// Parses one line (without its newline); `None` for a line that is not a record.
pub fn parse_record(line: &[u8]) -> Option<Record<'_>> {
    let mut parts = line.splitn(4, |b| *b == b' ');
    let time = std::str::from_utf8(parts.next()?).ok()?;
    let stream = std::str::from_utf8(parts.next()?).ok()?;
    let tags = parts.next()?;
    // A record of an empty line has no content field at all.
    let content = parts.next().unwrap_or_default();
    // Tags are `:`-separated; the first says full or partial.
    let partial = tags.split(|b| *b == b':').next() == Some(b"P");
    Some(Record { time, stream, partial, content })
}

/// Turns records into what the client reads, applying `since`, `timestamps` and
/// `limitBytes`.
#[derive(Debug)]
pub struct Formatter {
    opts: LogOptions,
    written: u64,
}

impl Formatter {
    pub fn new(opts: LogOptions) -> Self {
        Self { opts, written: 0 }
    }

    /// Whether `limitBytes` is used up.
    pub fn done(&self) -> bool {
        self.opts.limit_bytes.is_some_and(|l| self.written >= l)
    }

    /// Appends the output of one line of the file to `out`.
    pub fn line(&mut self, line: &[u8], out: &mut Vec<u8>) {
        let Some(rec) = parse_record(line) else { return };
        if let Some(since) = self.opts.since
            && rec.time.parse::<Timestamp>().is_ok_and(|t| t < since)
        {
            return;
        }
        let start = out.len();
        if self.opts.timestamps {
            out.extend_from_slice(rec.time.as_bytes());
            out.push(b' ');
        }
        out.extend_from_slice(rec.content);
        if !rec.partial {
            out.push(b'\n');
        }
        let mut len = (out.len() - start) as u64;
        if let Some(limit) = self.opts.limit_bytes {
            let room = limit.saturating_sub(self.written);
            if len > room {
                out.truncate(start + room as usize);
                len = room;
            }
        }
        self.written += len;
    }
}

/// The offset where the last `n` lines of the first `len` bytes of the file start.
pub fn tail_offset(file: &mut std::fs::File, n: u64, len: u64) -> std::io::Result<u64> {
    if n == 0 {
        return Ok(len);
    }
    let mut buf = vec![0u8; 16 * 1024];
    let (mut pos, mut seen) = (len, 0u64);
    while pos > 0 {
        let start = pos.saturating_sub(buf.len() as u64);
        let chunk = &mut buf[..(pos - start) as usize];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(chunk)?;
        for (i, b) in chunk.iter().enumerate().rev() {
            let at = start + i as u64;
            // The newline that ends the file ends the last line; it starts none.
            if *b == b'\n' && at + 1 != len {
                seen += 1;
                if seen == n {
                    return Ok(at + 1);
                }
            }
        }
        pos = start;
    }
    Ok(0)
}

/// A response body fed by a task through a channel; dropping it (the client went)
/// makes the task's next send fail, which ends the task.
struct ChannelBody(mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.0.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
    }
}

/// Serves one log request.
pub async fn serve_logs(
    locator: Arc<dyn ContainerLocator>,
    ns: &str,
    pod: &str,
    container: &str,
    query: &HashMap<String, String>,
) -> Response<Body> {
    let opts = match LogOptions::from_query(query) {
        Ok(o) => o,
        Err(e) => return text(StatusCode::BAD_REQUEST, e),
    };
    let loc = match locator.locate(ns, pod, Some(container)) {
        Ok(l) => l,
        Err(e) => return locate_error(&e),
    };
    let path = if opts.previous {
        match loc.previous_log_path.clone() {
            Some(p) => p,
            None => {
                return text(
                    StatusCode::BAD_REQUEST,
                    format!("previous terminated container \"{container}\" in pod \"{pod}\" not found"),
                );
            }
        }
    } else {
        loc.log_path.clone()
    };
    let (start, available) = match open_at(&path, opts.tail_lines).await {
        Ok(s) => s,
        Err(e) => {
            return text(
                StatusCode::NOT_FOUND,
                format!("cannot read the log of container {container} in pod {pod}: {e}"),
            );
        }
    };
    let (tx, rx) = mpsc::channel(16);
    // A previous instance's log never grows: following it ends at its end.
    let follow = (opts.follow && !opts.previous).then(|| Follow {
        locator,
        ns: ns.to_string(),
        pod: pod.to_string(),
        container: container.to_string(),
        container_id: loc.container_id,
    });
    // Without follow, lines written after the request are not part of the answer (so
    // that `tailLines` means what it says on a busy log).
    let limit = follow.is_none().then_some(available);
    tokio::spawn(pump(start, limit, Formatter::new(opts), follow, tx));
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/plain")
        .body(ChannelBody(rx).boxed())
        .unwrap()
}

/// Opens the log and seeks to where the output starts; also says how many bytes there
/// are from there to the end as it is now (what a request without follow reads).
async fn open_at(path: &Path, tail: Option<u64>) -> std::io::Result<(tokio::fs::File, u64)> {
    let path: PathBuf = path.to_path_buf();
    let (file, offset, len) = tokio::task::spawn_blocking(move || -> std::io::Result<_> {
        let mut f = std::fs::File::open(&path)?;
        let len = f.metadata()?.len();
        let offset = match tail {
            Some(n) => tail_offset(&mut f, n, len)?,
            None => 0,
        };
        Ok((f, offset, len))
    })
    .await
    .map_err(std::io::Error::other)??;
    let mut file = tokio::fs::File::from_std(file);
    file.seek(SeekFrom::Start(offset)).await?;
    Ok((file, len - offset))
}

/// What a follow needs to notice that its container stopped or was replaced.
#[derive(Clone)]
struct Follow {
    locator: Arc<dyn ContainerLocator>,
    ns: String,
    pod: String,
    container: String,
    container_id: String,
}

impl Follow {
    /// Whether the instance being followed is still the current one and runs.
    fn still_running(&self) -> bool {
        self.locator
            .locate(&self.ns, &self.pod, Some(&self.container))
            .is_ok_and(|l| l.container_id == self.container_id && l.running)
    }
}

/// Reads the file from where it is, sending formatted output, and follows it if asked.
async fn pump(
    mut file: tokio::fs::File,
    mut limit: Option<u64>,
    mut fmt: Formatter,
    follow: Option<Follow>,
    tx: mpsc::Sender<Bytes>,
) {
    let mut pending: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 32 * 1024];
    let mut polls = 0u32;
    // After the container stopped, one more read takes what it wrote last.
    let mut last_read = false;
    loop {
        let max = limit.map_or(chunk.len(), |l| l.min(chunk.len() as u64) as usize);
        let n = match file.read(&mut chunk[..max]).await {
            Ok(n) => {
                if let Some(l) = &mut limit {
                    *l -= n as u64;
                }
                n
            }
            Err(e) => {
                tracing::debug!(error = %e, "reading a container log failed");
                return;
            }
        };
        if n > 0 {
            pending.extend_from_slice(&chunk[..n]);
            let mut out = Vec::new();
            let mut consumed = 0;
            while let Some(nl) = pending[consumed..].iter().position(|b| *b == b'\n') {
                fmt.line(&pending[consumed..consumed + nl], &mut out);
                consumed += nl + 1;
                if fmt.done() {
                    break;
                }
            }
            pending.drain(..consumed);
            if !out.is_empty() && tx.send(Bytes::from(out)).await.is_err() {
                return;
            }
            if fmt.done() {
                return;
            }
            continue;
        }
        let Some(f) = &follow else { return };
        if last_read {
            return;
        }
        if tx.is_closed() {
            return;
        }
        polls += 1;
        if polls.is_multiple_of(POLLS_PER_CHECK) {
            let follow = f.clone();
            // The locator may take a lock; keep it off the runtime's threads.
            let running = tokio::task::spawn_blocking(move || follow.still_running()).await.unwrap_or(false);
            if !running {
                last_read = true;
                continue;
            }
        }
        tokio::time::sleep(FOLLOW_POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(lines: &str, opts: LogOptions) -> String {
        let mut f = Formatter::new(opts);
        let mut out = Vec::new();
        for l in lines.lines() {
            f.line(l.as_bytes(), &mut out);
        }
        String::from_utf8(out).unwrap()
    }

    const LOG: &str = "2016-10-06T00:17:09.669794202Z stdout F first\n\
                       2016-10-06T00:17:10.000000000Z stderr P sec\n\
                       2016-10-06T00:17:10.100000000Z stderr F ond\n\
                       2016-10-06T00:17:11.000000000Z stdout F\n\
                       2016-10-06T00:17:12.000000000Z stdout F last one\n";

    #[test]
    fn records_are_joined_and_stamped() {
        assert_eq!(render(LOG, LogOptions::default()), "first\nsecond\n\nlast one\n");
        let ts = render(LOG, LogOptions { timestamps: true, ..Default::default() });
        assert!(ts.starts_with("2016-10-06T00:17:09.669794202Z first\n2016-10-06T00:17:10.000000000Z sec"), "{ts}");
        assert_eq!(parse_record(b"garbage"), None);
    }

    #[test]
    fn since_and_limit() {
        let since = Some("2016-10-06T00:17:11Z".parse().unwrap());
        assert_eq!(render(LOG, LogOptions { since, ..Default::default() }), "\nlast one\n");
        assert_eq!(render(LOG, LogOptions { limit_bytes: Some(8), ..Default::default() }), "first\nse");
    }

    #[test]
    fn tail_counts_lines_from_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        std::fs::write(&path, LOG).unwrap();
        let mut f = std::fs::File::open(&path).unwrap();
        let at = |f: &mut std::fs::File, n| tail_offset(f, n, LOG.len() as u64).unwrap() as usize;
        assert_eq!(&LOG[at(&mut f, 1)..], "2016-10-06T00:17:12.000000000Z stdout F last one\n");
        assert_eq!(at(&mut f, 5), 0);
        assert_eq!(at(&mut f, 50), 0);
        assert_eq!(at(&mut f, 0), LOG.len());
    }

    #[test]
    fn options_from_the_query() {
        let q = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let o = LogOptions::from_query(&q(&[("follow", "true"), ("tailLines", "3"), ("timestamps", "1")])).unwrap();
        assert!(o.follow && o.timestamps && !o.previous);
        assert_eq!(o.tail_lines, Some(3));
        assert!(LogOptions::from_query(&q(&[("tailLines", "x")])).is_err());
        assert!(LogOptions::from_query(&q(&[("sinceSeconds", "5"), ("sinceTime", "2020-01-01T00:00:00Z")])).is_err());
        let o = LogOptions::from_query(&q(&[("sinceSeconds", "10")])).unwrap();
        assert!(o.since.unwrap() < Timestamp::now());
    }
}
