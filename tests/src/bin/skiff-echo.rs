//! `skiff-echo`: the demo and test app. A server that answers with its own name over TCP
//! (a line protocol, and HTTP on the same port), UDP and HTTP, and the clients the tests
//! and benchmarks drive through Services. As the entrypoint of the echo image
//! (`localhost/skiff/echo:1`) it is all a pod's container holds: there is no shell, so
//! the few commands `kubectl exec` needs (`--version`, `env`, `cat`, `exit`) are its own.
//!
//! ```text
//! skiff-echo [serve] [--name NAME] [--tcp PORT] [--udp PORT] [--listen IP] [--crash-after-ms N]
//!            [--ready-after-ms N] [--sigterm-delay-ms N]
//!            [--termination-message MSG] [--termination-log PATH]
//! skiff-echo --version                                                         prints the version, exits 0
//! skiff-echo env [NAME] | cat PATH... | exit CODE [MESSAGE]                     for `kubectl exec`
//! skiff-echo cat [--exit CODE]                        copies stdin to stdout until EOF, exits CODE
//! skiff-echo write PATH TEXT                                               writes TEXT to the file PATH
//! skiff-echo read PATH                                                     prints the file PATH
//! skiff-echo get  ADDR:PORT PATH [--timeout-ms T]                              one HTTP GET: `STATUS BODY`
//! skiff-echo tcp  ADDR:PORT [--count N] [--interval-ms T] [--timeout-ms T]   one connection per request
//! skiff-echo udp  ADDR:PORT [--count N] [--interval-ms T] [--timeout-ms T] [--size B] [--source-port P]
//! skiff-echo udp-sendto ADDR:PORT [--count N] [--interval-ms T] [--timeout-ms T]   unconnected; checks the answer's source
//! skiff-echo hold ADDR:PORT [--count N] [--interval-ms T] [--timeout-ms T]   one connection, N requests
//! skiff-echo conn-rate ADDR:PORT[,ADDR:PORT...] --duration-ms D [--max N] [--threads T]  (targets in turn)
//! skiff-echo bulk ADDR:PORT --bytes N                                          one transfer of N bytes
//! skiff-echo rr ADDR:PORT --duration-ms D                                      requests/s on one connection
//! skiff-echo hops ADDR:PORT [--max-ttl N] [--timeout-ms T]            UDP traceroute to a skiff-echo server
//! skiff-echo lookup NAME                                 its addresses, through the C library's resolver
//! skiff-echo hog MIB                                                          allocates MIB MiB, then holds it
//! skiff-echo burn SECONDS                                 keeps one CPU busy for SECONDS, then idles
//! ```
//!
//! `serve` is the default when the first argument is a flag or there is none (a pod's
//! `args` then need no subcommand). Its name is `--name`, else `$POD_NAME`, else the
//! hostname (which the runtime sets to the pod's name). Without `--tcp` and `--udp` it
//! listens on TCP and UDP port 8080, on every address unless `--listen IP` names one
//! (`--listen 127.0.0.1`: reachable only from inside the pod). On TCP a connection whose first line is an HTTP/1.x
//! request line is served as HTTP (one request, then close); any other line is answered
//! with the name, so the line clients above and HTTP probes share one port. HTTP paths:
//! `/` (the name), `/healthz` (200), `/readyz` (200 while ready, 503 while not),
//! `/unready` and `/ready` (toggle readiness), `/crash` (answers, then exits 1),
//! `/peer` (the name and the client's address as the server sees it),
//! `/env/NAME` (a variable's value, or 404).
//!
//! The server writes one stdout line at start, one per HTTP request and UDP datagram,
//! and one per line-protocol connection when it closes (not per line: the benchmarks
//! drive millions of lines through it). It exits 1 after `--crash-after-ms`, and 0 on
//! SIGTERM or SIGINT (after `--sigterm-delay-ms`: it runs as PID 1 in a container,
//! where a signal without a handler does nothing). Whenever it exits on its own it
//! writes `--termination-message` to `--termination-log` (default
//! `/dev/termination-log`, where the kubelet mounts `terminationMessagePath`).
//!
//! Clients print one line per request, `ok NAME` or `err WHY`, then a summary line
//! `sent=N ok=K failed=F` on stdout. `udp --size N` sends N bytes of payload per request
//! (the server answers with its name). Every loop is bounded in count and time.
//!
//! It uses std threads and no async runtime, so that it links statically into a few
//! hundred kilobytes (see `skiff_tests::image`).

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, ToSocketAddrs, UdpSocket},
    path::PathBuf,
    process::ExitCode,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

#[path = "skiff-echo/hops.rs"]
mod hops;

/// A server log line on stdout. Unlike `println!` it never panics: a server whose
/// stdout went away (a closed pipe) keeps serving.
macro_rules! log {
    ($($arg:tt)*) => {{
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

/// The port `serve` listens on (TCP and UDP) when given none.
const DEFAULT_PORT: u16 = 8080;

/// Prints an error as one line (`skiff-echo: what: why`) and exits 1: this is what a
/// person sees from `kubectl exec`, without anyhow's backtrace.
fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("skiff-echo: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let all: Vec<String> = std::env::args().skip(1).collect();
    // A container's args may hold only flags: they are `serve`'s.
    let (cmd, args) = match all.first() {
        Some(first) if !first.starts_with("--") || first == "--version" => (first.as_str(), &all[1..]),
        _ => ("serve", &all[..]),
    };
    let flag =
        |name: &str| -> Option<String> { args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned() };
    let num = |name: &str, default: u64| -> Result<u64> {
        flag(name).map(|v| v.parse().with_context(|| format!("{name} {v}"))).transpose().map(|v| v.unwrap_or(default))
    };
    let ms = |name: &str| -> Result<Option<Duration>> {
        Ok(flag(name).is_some().then(|| num(name, 0)).transpose()?.map(Duration::from_millis))
    };
    let port = |name: &str| flag(name).map(|p| p.parse::<u16>().with_context(|| format!("{name} {p}"))).transpose();
    let target = || -> Result<SocketAddr> { args.first().context("missing ADDR:PORT")?.parse().context("ADDR:PORT") };
    let timeout = Duration::from_millis(num("--timeout-ms", 2000)?);
    let count = num("--count", 1)?;
    let interval = Duration::from_millis(num("--interval-ms", 0)?);
    match cmd {
        "--version" | "version" => {
            println!("skiff-echo {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        "serve" => {
            let (mut tcp, mut udp) = (port("--tcp")?, port("--udp")?);
            if tcp.is_none() && udp.is_none() {
                (tcp, udp) = (Some(DEFAULT_PORT), Some(DEFAULT_PORT));
            }
            serve(ServeOptions {
                name: flag("--name").unwrap_or_else(own_name),
                tcp,
                udp,
                listen: flag("--listen").map_or(Ok(IpAddr::V4(Ipv4Addr::UNSPECIFIED)), |a| {
                    a.parse().with_context(|| format!("--listen {a}"))
                })?,
                crash_after: ms("--crash-after-ms")?,
                ready_after: ms("--ready-after-ms")?,
                sigterm_delay: ms("--sigterm-delay-ms")?.unwrap_or_default(),
                termination: flag("--termination-message").map(|message| {
                    (PathBuf::from(flag("--termination-log").unwrap_or_else(|| "/dev/termination-log".into())), message)
                }),
            })
        }
        "env" => print_env(args.first().map(String::as_str)),
        "cat" => cat(args),
        // For volume tests: data a pod writes and a later pod reads.
        "write" => {
            let (path, text) = (args.first().context("write PATH TEXT")?, args.get(1).context("write PATH TEXT")?);
            std::fs::write(path, text).with_context(|| format!("writing {path}"))
        }
        "read" => {
            let path = args.first().context("read PATH")?;
            print!("{}", std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?);
            Ok(())
        }
        "exit" => {
            let code = args.first().context("exit CODE [MESSAGE]")?;
            let code: i32 = code.parse().with_context(|| format!("exit code {code}"))?;
            if let Some(message) = args.get(1) {
                println!("{message}");
            }
            std::process::exit(code)
        }
        "get" => {
            let path = args.get(1).context("get ADDR:PORT PATH")?;
            let (status, body) = http_get(target()?, path, timeout)?;
            println!("{status} {}", body.trim_end());
            Ok(())
        }
        "tcp" => clients(count, interval, |_| tcp_request(target()?, timeout)),
        "udp" => {
            let size = num("--size", 5)? as usize;
            let source_port = port("--source-port")?.unwrap_or(0);
            clients(count, interval, |_| udp_request(target()?, timeout, size, source_port))
        }
        "udp-sendto" => clients(count, interval, |_| udp_sendto_request(target()?, timeout)),
        "hops" => hops::hops(target()?, num("--max-ttl", 8)? as u32, timeout),
        "rr" => request_response(target()?, Duration::from_millis(num("--duration-ms", 3000)?), timeout),
        "bulk" => {
            let bytes = num("--bytes", 1 << 20)?;
            clients(1, interval, |_| bulk(target()?, timeout, bytes))
        }
        "hold" => hold(target()?, count, interval, timeout),
        "conn-rate" => conn_rate(
            args.first()
                .context("missing ADDR:PORT")?
                .split(',')
                .map(|t| t.parse().with_context(|| format!("ADDR:PORT {t}")))
                .collect::<Result<_>>()?,
            Duration::from_millis(num("--duration-ms", 3000)?),
            num("--max", 1_000_000)?,
            num("--threads", 2)?,
        ),
        "hog" => hog(args.first().context("hog MIB")?.parse().context("hog MIB")?),
        "burn" => burn(Duration::from_secs(args.first().context("burn SECONDS")?.parse().context("burn SECONDS")?)),
        "lookup" => {
            // Through the C library's resolver (getaddrinfo): resolv.conf's nameserver,
            // search path and ndots, as any program in the pod would.
            let name = args.first().context("lookup NAME")?;
            let mut addrs: Vec<IpAddr> = (name.as_str(), 0u16)
                .to_socket_addrs()
                .with_context(|| format!("resolving {name}"))?
                .map(|a| a.ip())
                .collect();
            addrs.sort();
            addrs.dedup();
            for addr in addrs {
                println!("{addr}");
            }
            Ok(())
        }
        other => bail!("unknown command {other}; the usage is in the doc comment of tests/src/bin/skiff-echo.rs"),
    }
}

/// `$POD_NAME`, else the hostname (the pod's name in a pod), else `skiff-echo`.
fn own_name() -> String {
    std::env::var("POD_NAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|n| n.trim().to_owned())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "skiff-echo".into())
}

#[derive(Debug)]
struct ServeOptions {
    name: String,
    tcp: Option<u16>,
    udp: Option<u16>,
    /// The address to listen on (all of them by default).
    listen: IpAddr,
    crash_after: Option<Duration>,
    ready_after: Option<Duration>,
    sigterm_delay: Duration,
    /// Where to write which message when the server exits on its own.
    termination: Option<(PathBuf, String)>,
}

/// What the serving threads share.
#[derive(Debug)]
struct Server {
    name: String,
    ready: AtomicBool,
    termination: Option<(PathBuf, String)>,
}

impl Server {
    /// Ends the process with `code`, after a last log line and the termination message.
    fn exit(&self, code: i32, why: &str) -> ! {
        log!("exiting with code {code}: {why}");
        if let Some((path, message)) = &self.termination
            && let Err(e) = std::fs::write(path, message)
        {
            eprintln!("cannot write the termination message to {}: {e}", path.display());
        }
        let _ = std::io::stdout().flush();
        std::process::exit(code)
    }
}

/// How many connections the server handles at once.
const ACCEPT_THREADS: usize = 32;

fn serve(opts: ServeOptions) -> Result<()> {
    let server = Arc::new(Server {
        name: opts.name.clone(),
        ready: AtomicBool::new(opts.ready_after.is_none()),
        termination: opts.termination.clone(),
    });
    let mut threads = Vec::new();
    if let Some(port) = opts.udp {
        let sock = UdpSocket::bind((opts.listen, port)).with_context(|| format!("bind udp port {port}"))?;
        let server = server.clone();
        threads.push(std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while let Ok((n, peer)) = sock.recv_from(&mut buf) {
                let _ = sock.send_to(server.name.as_bytes(), peer);
                log!("udp {peer} {n} bytes");
            }
        }));
    }
    if let Some(port) = opts.tcp {
        let listener =
            Arc::new(TcpListener::bind((opts.listen, port)).with_context(|| format!("bind tcp port {port}"))?);
        // A fixed pool blocked in accept: no thread is spawned per connection, so the
        // connection-rate benchmark measures the network path rather than this server.
        for _ in 0..ACCEPT_THREADS {
            let (listener, server) = (listener.clone(), server.clone());
            threads.push(std::thread::spawn(move || {
                loop {
                    if let Ok((conn, peer)) = listener.accept() {
                        answer(&server, conn, peer);
                    }
                }
            }));
        }
    }
    let server_for_signals = server.clone();
    let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT])
        .context("installing the SIGTERM handler")?;
    std::thread::spawn(move || {
        if let Some(sig) = signals.forever().next() {
            log!("signal {sig}, exiting in {} ms", opts.sigterm_delay.as_millis());
            std::thread::sleep(opts.sigterm_delay);
            server_for_signals.exit(0, "terminated");
        }
    });
    if let Some(after) = opts.ready_after {
        let server = server.clone();
        std::thread::spawn(move || {
            std::thread::sleep(after);
            server.ready.store(true, Ordering::Relaxed);
            log!("ready after {} ms", after.as_millis());
        });
    }
    if let Some(after) = opts.crash_after {
        let server = server.clone();
        std::thread::spawn(move || {
            std::thread::sleep(after);
            server.exit(1, &format!("--crash-after-ms {}", after.as_millis()));
        });
    }
    let ports = |p: Option<u16>| p.map_or("-".to_owned(), |p| p.to_string());
    log!(
        "skiff-echo {} serving as {} on tcp {} (lines and HTTP), udp {}",
        env!("CARGO_PKG_VERSION"),
        opts.name,
        ports(opts.tcp),
        ports(opts.udp)
    );
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}

/// Serves one TCP connection: HTTP if its first line is an HTTP request line, else the
/// line protocol, in which every line is answered with the server's name until the
/// client closes.
fn answer(server: &Server, conn: TcpStream, peer: SocketAddr) {
    let _ = conn.set_nodelay(true);
    let mut writer = match conn.try_clone() {
        Ok(w) => w,
        Err(_) => return,
    };
    let mut reader = BufReader::new(conn);
    let reply = format!("{}\n", server.name);
    let mut line = String::new();
    let mut lines = 0u64;
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                if lines == 0
                    && let Some((method, target)) = http_request_line(&line)
                {
                    let (method, target) = (method.to_owned(), target.to_owned());
                    return answer_http(server, &mut reader, &mut writer, &method, &target, peer);
                }
                lines += 1;
                // `bulk N`: N bytes follow; answer with the count received.
                if let Some(n) = line.trim().strip_prefix("bulk ").and_then(|n| n.parse::<u64>().ok()) {
                    let got = std::io::copy(&mut (&mut reader).take(n), &mut std::io::sink()).unwrap_or(0);
                    if writeln!(writer, "{} got {got}", server.name).is_err() {
                        break;
                    }
                    continue;
                }
                if writer.write_all(reply.as_bytes()).is_err() {
                    break;
                }
            }
        }
    }
    log!("tcp {peer} closed after {lines} lines");
}

/// `(method, target)` if `line` is an HTTP/1.x request line such as `GET /readyz HTTP/1.1`.
fn http_request_line(line: &str) -> Option<(&str, &str)> {
    let mut parts = line.trim_end().split(' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    let is_http = parts.next().is_none()
        && version.starts_with("HTTP/1.")
        && !method.is_empty()
        && method.bytes().all(|b| b.is_ascii_uppercase())
        && target.starts_with('/');
    is_http.then_some((method, target))
}

/// The most header lines and body bytes a request may carry.
const MAX_HEADERS: usize = 100;
const MAX_BODY: u64 = 1 << 20;

/// Reads the rest of one HTTP request, answers it and closes (`Connection: close`).
fn answer_http(
    server: &Server,
    reader: &mut BufReader<TcpStream>,
    writer: &mut TcpStream,
    method: &str,
    target: &str,
    peer: SocketAddr,
) {
    let mut content_length = 0u64;
    let mut line = String::new();
    for _ in 0..MAX_HEADERS {
        line.clear();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((key, value)) = line.split_once(':')
            && key.trim().eq_ignore_ascii_case("content-length")
        {
            content_length = value.trim().parse().unwrap_or(0);
        }
    }
    let _ = std::io::copy(&mut reader.take(content_length.min(MAX_BODY)), &mut std::io::sink());
    let path = target.split('?').next().unwrap_or(target);
    let ready = || {
        if server.ready.load(Ordering::Relaxed) { (200, "ready\n".to_owned()) } else { (503, "unready\n".to_owned()) }
    };
    let (status, body) = match path {
        "/" => (200, format!("{}\n", server.name)),
        "/healthz" => (200, "ok\n".into()),
        "/readyz" => ready(),
        "/ready" | "/unready" => {
            let now = path == "/ready";
            server.ready.store(now, Ordering::Relaxed);
            (200, format!("{}\n", if now { "ready" } else { "unready" }))
        }
        "/crash" => (200, "crashing\n".into()),
        // Who the server sees: the tests check which source address a Service keeps.
        "/peer" => (200, format!("{} {}\n", server.name, peer.ip())),
        _ => match path.strip_prefix("/env/").map(std::env::var) {
            Some(Ok(value)) => (200, format!("{value}\n")),
            _ => (404, "not found\n".into()),
        },
    };
    let reason = match status {
        200 => "OK",
        404 => "Not Found",
        _ => "Service Unavailable",
    };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let sent = writer.write_all(head.as_bytes()).and_then(|()| writer.write_all(body.as_bytes()));
    let _ = writer.flush();
    log!("http {peer} {method} {target} {status}{}", if sent.is_err() { " (not sent)" } else { "" });
    if path == "/crash" {
        server.exit(1, "GET /crash");
    }
}

/// `env NAME` prints one variable (exit 1 if unset); `env` prints them all.
fn print_env(name: Option<&str>) -> Result<()> {
    match name {
        Some(name) => println!("{}", std::env::var(name).with_context(|| format!("${name} is not set"))?),
        None => {
            for (k, v) in std::env::vars_os() {
                println!("{}={}", k.to_string_lossy(), v.to_string_lossy());
            }
        }
    }
    Ok(())
}

/// `cat PATH...`: the files' bytes on stdout.
/// `cat PATH...` prints files; `cat [--exit CODE]` copies stdin to stdout until its end
/// (what `kubectl exec -i` and `attach` feed), then exits with CODE (0 by default).
fn cat(args: &[String]) -> Result<()> {
    let mut out = std::io::stdout().lock();
    if args.is_empty() || args[0] == "--exit" {
        let code: i32 = match args.get(1) {
            Some(c) => c.parse().with_context(|| format!("--exit {c}"))?,
            None if args.is_empty() => 0,
            None => bail!("cat --exit CODE"),
        };
        std::io::copy(&mut std::io::stdin().lock(), &mut out).context("copying stdin")?;
        out.flush()?;
        std::process::exit(code)
    }
    for path in args {
        out.write_all(&std::fs::read(path).with_context(|| format!("reading {path}"))?)?;
    }
    Ok(())
}

/// One HTTP/1.1 GET: the status code and the body (read to the end: the server closes).
fn http_get(target: SocketAddr, path: &str, timeout: Duration) -> Result<(u16, String)> {
    let conn = TcpStream::connect_timeout(&target, timeout)?;
    conn.set_read_timeout(Some(timeout))?;
    write!(&conn, "GET {path} HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n")?;
    let mut response = String::new();
    (&conn).take(MAX_BODY).read_to_string(&mut response)?;
    let (head, body) = response.split_once("\r\n\r\n").context("HTTP response without a header end")?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad HTTP status line {:?}", head.lines().next()))?;
    Ok((status, body.to_owned()))
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

/// One datagram and its answer; `source_port` 0 lets the kernel pick the port.
fn udp_request(target: SocketAddr, timeout: Duration, size: usize, source_port: u16) -> Result<String> {
    let sock = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, source_port))?;
    sock.connect(target)?;
    sock.set_read_timeout(Some(timeout))?;
    sock.send(&vec![b'x'; size.max(1)])?;
    let mut buf = [0u8; 2048];
    let n = sock.recv(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// One request on an unconnected UDP socket (`sendto`, `recvfrom`): the answer must come
/// from the address asked, as it would for a resolver that checks it.
fn udp_sendto_request(target: SocketAddr, timeout: Duration) -> Result<String> {
    let sock = UdpSocket::bind("0.0.0.0:0")?;
    sock.set_read_timeout(Some(timeout))?;
    sock.send_to(b"x", target)?;
    let mut buf = [0u8; 2048];
    let (n, from) = sock.recv_from(&mut buf)?;
    anyhow::ensure!(from == target, "answer from {from}, not from {target}");
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
/// parallel until `duration` passes or `max` connections were made. With several
/// targets, each connection goes to the next one in turn.
fn conn_rate(targets: Vec<SocketAddr>, duration: Duration, max: u64, threads: u64) -> Result<()> {
    let targets = Arc::new(targets);
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let workers: Vec<_> = (0..threads.max(1))
        .map(|_| {
            let (done, failed, stop, targets) = (done.clone(), failed.clone(), stop.clone(), targets.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) && start.elapsed() < duration {
                    let n = done.fetch_add(1, Ordering::Relaxed);
                    if n >= max {
                        done.fetch_sub(1, Ordering::Relaxed);
                        stop.store(true, Ordering::Relaxed);
                        break;
                    }
                    if tcp_request(targets[n as usize % targets.len()], Duration::from_secs(1)).is_err() {
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

/// Allocates and touches `mib` MiB (so the pages are really charged to its cgroup),
/// printing its progress, then holds it for up to ten minutes: under a smaller memory
/// limit the OOM killer ends it first, which is what the OOM tests want.
fn hog(mib: usize) -> Result<()> {
    let mut held: Vec<Vec<u8>> = Vec::with_capacity(mib);
    for i in 1..=mib {
        held.push(std::hint::black_box(vec![0xa5; 1 << 20]));
        if i % 4 == 0 || i == mib {
            log!("hog: {i} MiB");
        }
    }
    std::thread::sleep(Duration::from_secs(600));
    log!("hog: held {} MiB", std::hint::black_box(&held).len());
    Ok(())
}

/// Keeps one CPU busy for `time` (what an autoscaler test measures), then idles for up
/// to ten minutes, so the container neither ends nor burns without bound.
fn burn(time: Duration) -> Result<()> {
    log!("burn: {} s", time.as_secs());
    let started = Instant::now();
    let mut x = 0u64;
    while started.elapsed() < time {
        for i in 0..100_000u64 {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(i));
        }
    }
    log!("burn: done ({x:x})");
    std::thread::sleep(Duration::from_secs(600));
    Ok(())
}
