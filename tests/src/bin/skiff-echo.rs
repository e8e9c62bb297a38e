//! `skiff-echo`: the demo and test app. A server that answers with its own name over TCP
//! and UDP, and the clients the tests and benchmarks drive through Services.
//!
//! ```text
//! skiff-echo serve --name NAME [--tcp PORT] [--udp PORT]
//! skiff-echo tcp  ADDR:PORT [--count N] [--interval-ms T] [--timeout-ms T]   one connection per request
//! skiff-echo udp  ADDR:PORT [--count N] [--interval-ms T] [--timeout-ms T]
//! skiff-echo hold ADDR:PORT [--count N] [--interval-ms T] [--timeout-ms T]   one connection, N requests
//! skiff-echo conn-rate ADDR:PORT --duration-ms D [--max N] [--threads T]
//! skiff-echo bulk ADDR:PORT --bytes N                                          one transfer of N bytes
//! skiff-echo rr ADDR:PORT --duration-ms D                                      requests/s on one connection
//! ```
//! `udp --size N` sends N bytes of payload per request (the server answers with its name).
//! Clients print one line per request, `ok NAME` or `err WHY`, then a summary line
//! `sent=N ok=K failed=F` on stdout. Every loop is bounded in count and time.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(cmd) = args.first() else { bail!("usage: skiff-echo serve|tcp|udp|hold|conn-rate ...") };
    let flag =
        |name: &str| -> Option<String> { args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned() };
    let num = |name: &str, default: u64| -> Result<u64> {
        flag(name).map(|v| v.parse().with_context(|| format!("{name} {v}"))).transpose().map(|v| v.unwrap_or(default))
    };
    let target = || -> Result<SocketAddr> { args.get(1).context("missing ADDR:PORT")?.parse().context("ADDR:PORT") };
    let timeout = Duration::from_millis(num("--timeout-ms", 2000)?);
    let count = num("--count", 1)?;
    let interval = Duration::from_millis(num("--interval-ms", 0)?);
    match cmd.as_str() {
        "serve" => serve(&flag("--name").context("--name")?, flag("--tcp"), flag("--udp")),
        "tcp" => clients(count, interval, |_| tcp_request(target()?, timeout)),
        "udp" => {
            let size = num("--size", 5)? as usize;
            clients(count, interval, |_| udp_request(target()?, timeout, size))
        }
        "rr" => request_response(target()?, Duration::from_millis(num("--duration-ms", 3000)?), timeout),
        "bulk" => {
            let bytes = num("--bytes", 1 << 20)?;
            clients(1, interval, |_| bulk(target()?, timeout, bytes))
        }
        "hold" => hold(target()?, count, interval, timeout),
        "conn-rate" => conn_rate(
            target()?,
            Duration::from_millis(num("--duration-ms", 3000)?),
            num("--max", 1_000_000)?,
            num("--threads", 2)?,
        ),
        other => bail!("unknown command {other}"),
    }
}

/// How many connections the server handles at once.
const ACCEPT_THREADS: usize = 32;

fn serve(name: &str, tcp: Option<String>, udp: Option<String>) -> Result<()> {
    let mut threads = Vec::new();
    if let Some(port) = udp {
        let sock = UdpSocket::bind(("0.0.0.0", port.parse::<u16>()?)).context("bind udp")?;
        let reply = name.as_bytes().to_vec();
        threads.push(std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while let Ok((_, peer)) = sock.recv_from(&mut buf) {
                let _ = sock.send_to(&reply, peer);
            }
        }));
    }
    if let Some(port) = tcp {
        let listener = std::sync::Arc::new(TcpListener::bind(("0.0.0.0", port.parse::<u16>()?)).context("bind tcp")?);
        let reply = format!("{name}\n");
        // A fixed pool blocked in accept: no thread is spawned per connection, so the
        // connection-rate benchmark measures the network path rather than this server.
        for _ in 0..ACCEPT_THREADS {
            let (listener, reply) = (listener.clone(), reply.clone());
            threads.push(std::thread::spawn(move || {
                loop {
                    if let Ok((conn, _)) = listener.accept() {
                        answer_lines(conn, reply.as_bytes());
                    }
                }
            }));
        }
    }
    println!("serving");
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}

/// Answers every line with the server's name until the client closes.
fn answer_lines(conn: TcpStream, reply: &[u8]) {
    let _ = conn.set_nodelay(true);
    let mut writer = match conn.try_clone() {
        Ok(w) => w,
        Err(_) => return,
    };
    let mut reader = BufReader::new(conn);
    let mut line = String::new();
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                // `bulk N`: N bytes follow; answer with the count received.
                if let Some(n) = line.trim().strip_prefix("bulk ").and_then(|n| n.parse::<u64>().ok()) {
                    let got = std::io::copy(&mut (&mut reader).take(n), &mut std::io::sink()).unwrap_or(0);
                    let name = String::from_utf8_lossy(reply);
                    if writeln!(writer, "{} got {got}", name.trim()).is_err() {
                        return;
                    }
                    continue;
                }
                if writer.write_all(reply).is_err() {
                    return;
                }
            }
        }
    }
}

fn tcp_request(target: SocketAddr, timeout: Duration) -> Result<String> {
    let conn = TcpStream::connect_timeout(&target, timeout)?;
    conn.set_read_timeout(Some(timeout))?;
    conn.set_nodelay(true)?;
    (&conn).write_all(b"hello\n")?;
    let mut line = String::new();
    BufReader::new(&conn).read_line(&mut line)?;
    if line.is_empty() {
        bail!("connection closed without an answer");
    }
    Ok(line.trim().to_owned())
}

fn udp_request(target: SocketAddr, timeout: Duration, size: usize) -> Result<String> {
    let sock = UdpSocket::bind("0.0.0.0:0")?;
    sock.connect(target)?;
    sock.set_read_timeout(Some(timeout))?;
    sock.send(&vec![b'x'; size.max(1)])?;
    let mut buf = [0u8; 2048];
    let n = sock.recv(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// Request/response rate on one TCP connection: one line out, one line back, for
/// `duration`.
fn request_response(target: SocketAddr, duration: Duration, timeout: Duration) -> Result<()> {
    let conn = TcpStream::connect_timeout(&target, timeout)?;
    conn.set_read_timeout(Some(timeout))?;
    conn.set_nodelay(true)?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < duration {
        (&conn).write_all(b"ping\n")?;
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            bail!("connection closed after {n} requests");
        }
        n += 1;
    }
    let elapsed = start.elapsed().as_secs_f64();
    println!("requests={n} elapsed_s={elapsed:.3} rate={:.1}", n as f64 / elapsed);
    Ok(())
}

/// One TCP connection carrying `bytes` bytes to the server, which reports how many
/// arrived.
fn bulk(target: SocketAddr, timeout: Duration, bytes: u64) -> Result<String> {
    let conn = TcpStream::connect_timeout(&target, timeout)?;
    conn.set_read_timeout(Some(timeout * 10))?;
    conn.set_write_timeout(Some(timeout * 10))?;
    (&conn).write_all(format!("bulk {bytes}\n").as_bytes())?;
    let chunk = vec![0x5au8; 64 * 1024];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        (&conn).write_all(&chunk[..n])?;
        left -= n as u64;
    }
    let mut line = String::new();
    BufReader::new(&conn).read_line(&mut line)?;
    Ok(line.trim().to_owned())
}

fn clients(count: u64, interval: Duration, mut request: impl FnMut(u64) -> Result<String>) -> Result<()> {
    let (mut ok, mut failed) = (0, 0);
    let out = std::io::stdout();
    for i in 0..count {
        match request(i) {
            Ok(name) => {
                ok += 1;
                writeln!(out.lock(), "ok {name}")?;
            }
            Err(e) => {
                failed += 1;
                writeln!(out.lock(), "err {e:#}")?;
            }
        }
        if !interval.is_zero() {
            std::thread::sleep(interval);
        }
    }
    println!("sent={count} ok={ok} failed={failed}");
    Ok(())
}

fn hold(target: SocketAddr, count: u64, interval: Duration, timeout: Duration) -> Result<()> {
    let conn = TcpStream::connect_timeout(&target, timeout)?;
    conn.set_read_timeout(Some(timeout))?;
    conn.set_nodelay(true)?;
    let mut reader = BufReader::new(conn.try_clone()?);
    println!("connected");
    clients(count, interval, |_| {
        (&conn).write_all(b"hello\n")?;
        let mut line = String::new();
        reader.read_line(&mut line)?;
        if line.is_empty() {
            bail!("connection closed");
        }
        Ok(line.trim().to_owned())
    })
}

/// New connections per second: connect, one request, close; `threads` loops in
/// parallel until `duration` passes or `max` connections were made.
fn conn_rate(target: SocketAddr, duration: Duration, max: u64, threads: u64) -> Result<()> {
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let workers: Vec<_> = (0..threads.max(1))
        .map(|_| {
            let (done, failed, stop) = (done.clone(), failed.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) && start.elapsed() < duration {
                    if done.fetch_add(1, Ordering::Relaxed) >= max {
                        done.fetch_sub(1, Ordering::Relaxed);
                        stop.store(true, Ordering::Relaxed);
                        break;
                    }
                    if tcp_request(target, Duration::from_secs(1)).is_err() {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.join();
    }
    let elapsed = start.elapsed().as_secs_f64();
    let n = done.load(Ordering::Relaxed);
    let f = failed.load(Ordering::Relaxed);
    println!("conns={n} failed={f} elapsed_s={elapsed:.3} rate={:.1}", (n - f) as f64 / elapsed);
    Ok(())
}
