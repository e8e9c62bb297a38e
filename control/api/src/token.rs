//! The bearer token an HTTPS transport sends: a fixed one from a kubeconfig, or one read
//! from a file and read again every minute, because bound ServiceAccount tokens (the
//! in-cluster ones) are rotated by the kubelet while the process runs.
//!
//! It must not log or print a token, and must not parse one: the server judges tokens.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::HeaderValue;

/// How long a token read from a file is used before the file is read again; client-go
/// waits the same minute, and the kubelet rotates well before a token expires.
pub const TOKEN_FILE_PERIOD: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read the bearer token file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("the bearer token file {path} is empty")]
    Empty { path: PathBuf },
    #[error("the bearer token contains characters not allowed in an HTTP header")]
    Header(#[source] http::header::InvalidHeaderValue),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Where the `Authorization: Bearer` value comes from.
pub(crate) enum BearerToken {
    Fixed(HeaderValue),
    File(TokenFile),
}

impl BearerToken {
    /// The header value to send now.
    pub(crate) fn header(&self) -> Result<HeaderValue> {
        match self {
            BearerToken::Fixed(v) => Ok(v.clone()),
            BearerToken::File(f) => f.header(),
        }
    }
}

/// `Authorization` header value for `token`, marked sensitive so that hyper never
/// prints it.
pub(crate) fn header_value(token: &str) -> Result<HeaderValue> {
    let mut v = HeaderValue::from_str(&format!("Bearer {}", token.trim())).map_err(Error::Header)?;
    v.set_sensitive(true);
    Ok(v)
}

/// A token file with the value last read from it.
pub(crate) struct TokenFile {
    path: PathBuf,
    period: Duration,
    cached: Mutex<Option<(HeaderValue, Instant)>>,
}

impl TokenFile {
    /// `initial`, when given, is the file's content just read by the caller, so that
    /// the first request does not read it again.
    pub(crate) fn new(path: &Path, initial: Option<&str>, period: Duration) -> Result<Self> {
        let cached = match initial {
            Some(t) => Some((header_value(t)?, Instant::now())),
            None => None,
        };
        Ok(Self { path: path.into(), period, cached: Mutex::new(cached) })
    }

    fn header(&self) -> Result<HeaderValue> {
        let mut cached = self.cached.lock().unwrap();
        if let Some((v, read_at)) = cached.as_ref()
            && read_at.elapsed() < self.period
        {
            return Ok(v.clone());
        }
        // The file is a few hundred bytes on a local (tmpfs) volume: a blocking read
        // under the lock costs less than the bookkeeping of an async one.
        match read(&self.path).and_then(|t| header_value(&t)) {
            Ok(v) => {
                *cached = Some((v.clone(), Instant::now()));
                Ok(v)
            }
            // Keep sending the last good token while the file is being replaced or
            // unreadable for a moment; the server says 401 once it has expired.
            Err(e) => match cached.as_ref() {
                Some((v, _)) => {
                    tracing::warn!(path = %self.path.display(), error = %e, "cannot re-read the token file; using the previous token");
                    Ok(v.clone())
                }
                None => Err(e),
            },
        }
    }
}

/// Reads a token file; surrounding whitespace (a trailing newline) is not the token's.
pub fn read(path: &Path) -> Result<String> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Read { path: path.into(), source })?;
    let token = text.trim();
    if token.is_empty() {
        return Err(Error::Empty { path: path.into() });
    }
    Ok(token.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A temp dir holding a file `token` with `text`.
    fn token_file(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    #[test]
    fn a_token_file_is_read_again_after_its_period() {
        let (_dir, path) = token_file("one\n");
        let f = TokenFile::new(&path, Some(&read(&path).unwrap()), Duration::from_millis(50)).unwrap();
        assert_eq!(f.header().unwrap(), "Bearer one");
        std::fs::write(&path, "two\n").unwrap();
        assert_eq!(f.header().unwrap(), "Bearer one", "cached within the period");
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(f.header().unwrap(), "Bearer two");
        assert!(f.header().unwrap().is_sensitive());
    }

    #[test]
    fn a_vanished_token_file_keeps_the_last_token_but_never_invents_one() {
        let (dir, path) = token_file("one");
        let f = TokenFile::new(&path, None, Duration::ZERO).unwrap();
        assert_eq!(f.header().unwrap(), "Bearer one");
        std::fs::remove_file(&path).unwrap();
        assert_eq!(f.header().unwrap(), "Bearer one");

        let missing = TokenFile::new(&dir.path().join("nope"), None, Duration::ZERO).unwrap();
        let e = missing.header().unwrap_err();
        assert!(matches!(e, Error::Read { .. }), "{e}");
        std::fs::write(&path, "  \n").unwrap();
        assert!(matches!(read(&path).unwrap_err(), Error::Empty { .. }));
    }
}
