//! A loopback HTTP proxy in front of the S3 test server that injects faults into every Nth
//! request: 503 SlowDown, 500 InternalError, a connection reset before any response, (for
//! GETs) a response whose body is cut off halfway, or a response that comes late. The binary under test talks to it exactly as
//! to S3; it sees the faults a flaky network and a busy S3 produce.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    SlowDown,
    InternalError,
    Reset,
    /// GETs only: the body stops halfway and the connection closes (other requests get a 503).
    Truncate,
    /// The response comes, complete, after a pause of `SLOW` (a busy or distant store).
    Slow,
    /// 403 AccessDenied, as an IAM policy that does not allow the call answers.
    Forbidden,
    /// 501 NotImplemented, as a store without the operation answers.
    NotImplemented,
    /// 400 InvalidArgument, as radosgw answers a storage class it does not know.
    InvalidArgument,
}

/// How long a [`Fault::Slow`] response waits.
pub const SLOW: std::time::Duration = std::time::Duration::from_millis(1500);

#[derive(Default, Debug, Clone)]
pub struct Injected {
    pub slowdown: u64,
    pub internal: u64,
    pub reset: u64,
    pub truncate: u64,
    pub slow: u64,
    pub forbidden: u64,
}

/// What the proxy enforces on every request, besides faults: the rules of a bucket policy, or
/// the behaviour of a store that ignores conditional writes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Policy {
    /// Forward everything.
    #[default]
    Open,
    /// examples/iam/bucket-policy-append-only.json for a backup host: an object-creating
    /// request (PutObject, CompleteMultipartUpload) without `If-None-Match` and every delete
    /// (DeleteObject, DeleteObjects) get 403 AccessDenied.
    AppendOnly,
    /// A store that ignores `If-None-Match`: the header is dropped, so a PUT overwrites.
    IgnoresConditions,
    /// A store that keeps chunk framing as object data (s3rver with aws-chunked bodies) and
    /// checks no checksum: the body of every PUT under `/data/` reaches the store wrapped in
    /// a chunk header and trailer, without its checksum headers.
    KeepsFraming,
}

struct State {
    upstream: String,
    policy: Mutex<Policy>,
    /// Request lines the policy refused.
    denied: Mutex<Vec<String>>,
    /// Every `every`-th request gets the next fault of `faults` (0: no faults).
    every: AtomicU64,
    faults: Mutex<Vec<Fault>>,
    /// Only requests whose request line contains this (e.g. "PUT /bucket/r/data/") count.
    only: Mutex<Option<String>>,
    count: AtomicU64,
    injected: Mutex<Injected>,
    /// Every request line, with its Range header when it has one.
    log: Mutex<Vec<String>>,
    /// The store is gone: connections are refused (the listening socket is closed) and open
    /// ones are reset, as when the server process is killed.
    dead: AtomicBool,
    /// The store hangs: requests are read and never answered, as a stopped (SIGSTOP) server.
    hung: AtomicBool,
    /// After this many more requests whose line contains `stop_on`, the store dies or hangs.
    stop_after: Mutex<Option<(u64, String, bool)>>,
}

pub struct FaultProxy {
    pub endpoint: String,
    state: Arc<State>,
}

impl FaultProxy {
    /// Starts a proxy on 127.0.0.1 forwarding to `upstream` (`http://127.0.0.1:PORT`).
    pub fn start(upstream: &str) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(State {
            upstream: upstream
                .trim_start_matches("http://")
                .trim_end_matches('/')
                .to_string(),
            policy: Mutex::new(Policy::Open),
            denied: Mutex::new(Vec::new()),
            every: AtomicU64::new(0),
            faults: Mutex::new(Vec::new()),
            only: Mutex::new(None),
            count: AtomicU64::new(0),
            injected: Mutex::new(Injected::default()),
            log: Mutex::new(Vec::new()),
            dead: AtomicBool::new(false),
            hung: AtomicBool::new(false),
            stop_after: Mutex::new(None),
        });
        let st = state.clone();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let mut listener = Some(listener);
            loop {
                // Dead: the port is closed (connections refused) until revived.
                if st.dead.load(Ordering::SeqCst) {
                    listener = None;
                    std::thread::sleep(std::time::Duration::from_millis(5));
                    continue;
                }
                let l = listener.get_or_insert_with(|| {
                    let l = TcpListener::bind(addr).unwrap();
                    l.set_nonblocking(true).unwrap();
                    l
                });
                l.set_nonblocking(true).unwrap();
                match l.accept() {
                    Ok((conn, _)) => {
                        conn.set_nonblocking(false).unwrap();
                        let st = st.clone();
                        std::thread::spawn(move || {
                            let _ = serve(conn, &st);
                        });
                    }
                    Err(_) => std::thread::sleep(std::time::Duration::from_millis(2)),
                }
            }
        });
        FaultProxy { endpoint, state }
    }

    /// The store dies (`hang` false: its port refuses connections, open ones are reset) or
    /// hangs (requests are never answered) once `n` more requests containing `only` came.
    pub fn stop_after(&self, n: u64, only: &str, hang: bool) {
        *self.state.stop_after.lock().unwrap() = Some((n, only.to_string(), hang));
    }

    /// The store answers again.
    pub fn revive(&self) {
        *self.state.stop_after.lock().unwrap() = None;
        self.state.hung.store(false, Ordering::SeqCst);
        self.state.dead.store(false, Ordering::SeqCst);
    }

    /// From now on every `every`-th request gets the next of `faults`, in turn.
    pub fn arm(&self, every: u64, faults: &[Fault]) {
        self.arm_only(every, faults, None);
    }

    /// As [`arm`](Self::arm), counting only requests whose request line contains `only`.
    pub fn arm_only(&self, every: u64, faults: &[Fault], only: Option<&str>) {
        *self.state.only.lock().unwrap() = only.map(str::to_string);
        *self.state.faults.lock().unwrap() = faults.to_vec();
        self.state.count.store(0, Ordering::SeqCst);
        self.state.every.store(every, Ordering::SeqCst);
    }

    /// Enforces `p` from now on.
    pub fn set_policy(&self, p: Policy) {
        *self.state.policy.lock().unwrap() = p;
    }

    /// The request lines the policy refused so far.
    pub fn denied(&self) -> Vec<String> {
        self.state.denied.lock().unwrap().clone()
    }

    /// Every request so far: `METHOD TARGET HTTP/1.1 [range][ aws-chunked][ key=K region=R]`.
    pub fn requests(&self) -> Vec<String> {
        self.state.log.lock().unwrap().clone()
    }

    pub fn disarm(&self) {
        self.state.every.store(0, Ordering::SeqCst);
    }

    pub fn injected(&self) -> Injected {
        self.state.injected.lock().unwrap().clone()
    }
}

struct Message {
    head: Vec<String>,
    body: Vec<u8>,
}

fn header<'a>(head: &'a [String], name: &str) -> Option<&'a str> {
    head.iter().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// Reads a head (request or status line plus headers); None at a clean end of stream.
fn read_head(r: &mut impl BufRead) -> std::io::Result<Option<Vec<String>>> {
    let mut head = Vec::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        let line = line.trim_end_matches(['\r', '\n']).to_string();
        if line.is_empty() {
            if head.is_empty() {
                continue;
            }
            return Ok(Some(head));
        }
        head.push(line);
    }
}

/// Reads a body framed by Content-Length or chunked encoding (kept raw, framing included).
fn read_body(r: &mut impl BufRead, head: &[String], has_body: bool) -> std::io::Result<Vec<u8>> {
    if !has_body {
        return Ok(Vec::new());
    }
    if header(head, "transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        let mut raw = Vec::new();
        loop {
            let mut line = String::new();
            r.read_line(&mut line)?;
            raw.extend_from_slice(line.as_bytes());
            let n = usize::from_str_radix(line.trim().split(';').next().unwrap_or("0"), 16)
                .unwrap_or(0);
            if n == 0 {
                // Trailers up to an empty line.
                loop {
                    let mut t = String::new();
                    r.read_line(&mut t)?;
                    raw.extend_from_slice(t.as_bytes());
                    if t.trim().is_empty() {
                        return Ok(raw);
                    }
                }
            }
            let mut chunk = vec![0; n + 2];
            r.read_exact(&mut chunk)?;
            raw.extend_from_slice(&chunk);
        }
    }
    match header(head, "content-length").and_then(|v| v.parse::<usize>().ok()) {
        Some(n) => {
            let mut b = vec![0; n];
            r.read_exact(&mut b)?;
            Ok(b)
        }
        None => Ok(Vec::new()),
    }
}

fn write_message(w: &mut impl Write, m: &Message) -> std::io::Result<()> {
    let mut out = Vec::new();
    for l in &m.head {
        out.extend_from_slice(l.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&m.body);
    w.write_all(&out)?;
    w.flush()
}

fn error_response(status: &str, code: &str) -> Message {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code>\
         <Message>injected by the test proxy</Message><RequestId>fault</RequestId></Error>"
    )
    .into_bytes();
    Message {
        head: vec![
            format!("HTTP/1.1 {status}"),
            "Content-Type: application/xml".into(),
            format!("Content-Length: {}", body.len()),
        ],
        body,
    }
}

/// Closes with a TCP reset (SO_LINGER 0), as a dropped connection looks to the client.
fn reset(conn: TcpStream) {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    unsafe {
        libc::setsockopt(
            conn.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &l as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    drop(conn);
}

fn forward(st: &State, req: &Message) -> std::io::Result<Message> {
    let up = TcpStream::connect(&st.upstream)?;
    let mut head: Vec<String> = req
        .head
        .iter()
        .filter(|l| {
            let k = l
                .split(':')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            k != "connection" && k != "expect"
        })
        .cloned()
        .collect();
    head.push("Connection: close".into());
    let mut w = up.try_clone()?;
    write_message(
        &mut w,
        &Message {
            head,
            body: req.body.clone(),
        },
    )?;
    let mut r = BufReader::new(up);
    let mut resp_head = read_head(&mut r)?.ok_or(std::io::ErrorKind::UnexpectedEof)?;
    let status: u16 = resp_head[0]
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let is_head = req.head[0].starts_with("HEAD ");
    let has_body = !is_head && status != 204 && status != 304;
    let body = if has_body
        && header(&resp_head, "content-length").is_none()
        && header(&resp_head, "transfer-encoding").is_none()
    {
        let mut b = Vec::new();
        r.read_to_end(&mut b)?;
        resp_head.push(format!("Content-Length: {}", b.len()));
        b
    } else {
        read_body(&mut r, &resp_head, has_body)?
    };
    resp_head.retain(|l| !l.to_ascii_lowercase().starts_with("connection:"));
    Ok(Message {
        head: resp_head,
        body,
    })
}

fn serve(conn: TcpStream, st: &State) -> std::io::Result<()> {
    let mut r = BufReader::new(conn.try_clone()?);
    let mut w = conn.try_clone()?;
    loop {
        let Some(head) = read_head(&mut r)? else {
            return Ok(());
        };
        if header(&head, "expect").is_some_and(|v| v.eq_ignore_ascii_case("100-continue")) {
            w.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        }
        let body = read_body(&mut r, &head, true)?;
        {
            let mut stop = st.stop_after.lock().unwrap();
            if let Some((n, only, hang)) = stop.as_mut() {
                if head[0].contains(only.as_str()) {
                    if *n == 0 {
                        let which = if *hang { &st.hung } else { &st.dead };
                        which.store(true, Ordering::SeqCst);
                        *stop = None;
                    } else {
                        *n -= 1;
                    }
                }
            }
        }
        if st.dead.load(Ordering::SeqCst) {
            reset(conn);
            return Ok(());
        }
        if st.hung.load(Ordering::SeqCst) {
            // Never answered; the connection closes once the store is revived.
            while st.hung.load(Ordering::SeqCst) {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            return Ok(());
        }
        // Bodies sent with aws-chunked framing (a trailing checksum) are marked: some stores
        // refuse them or keep the framing.
        let chunked = header(&head, "x-amz-content-sha256")
            .is_some_and(|v| v.starts_with("STREAMING"))
            || header(&head, "content-encoding").is_some_and(|v| v.contains("aws-chunked"));
        // The access key and the region the request is signed with (SigV4 credential scope
        // KEY/DATE/REGION/s3/…).
        let scope: Vec<&str> = header(&head, "authorization")
            .and_then(|a| a.split("Credential=").nth(1))
            .map(|c| c.split('/').collect())
            .unwrap_or_default();
        let region = match scope.as_slice() {
            [key, _, region, ..] => format!(" key={key} region={region}"),
            _ => String::new(),
        };
        st.log.lock().unwrap().push(format!(
            "{} {}{}{region}",
            head[0],
            header(&head, "range").unwrap_or(""),
            if chunked { " aws-chunked" } else { "" }
        ));
        let mut req = Message { head, body };
        match *st.policy.lock().unwrap() {
            Policy::Open => {}
            Policy::IgnoresConditions => req
                .head
                .retain(|l| !l.to_ascii_lowercase().starts_with("if-none-match:")),
            Policy::KeepsFraming => {
                if req.head[0].starts_with("PUT ") && req.head[0].contains("/data/") {
                    let mut framed =
                        format!("{:x};chunk-signature=0\r\n", req.body.len()).into_bytes();
                    framed.extend_from_slice(&req.body);
                    framed.extend_from_slice(b"\r\n0;chunk-signature=0\r\n\r\n");
                    req.head.retain(|l| {
                        let k = l.to_ascii_lowercase();
                        !(k.starts_with("x-amz-checksum")
                            || k.starts_with("x-amz-sdk-checksum")
                            || k.starts_with("x-amz-trailer")
                            || k.starts_with("content-md5")
                            || k.starts_with("content-length"))
                    });
                    req.head.push(format!("Content-Length: {}", framed.len()));
                    req.body = framed;
                }
            }
            Policy::AppendOnly => {
                let line = req.head[0].clone();
                let (method, target) = {
                    let mut it = line.split_whitespace();
                    (it.next().unwrap_or(""), it.next().unwrap_or(""))
                };
                let query = target.split_once('?').map(|q| q.1).unwrap_or("");
                let has = |k: &str| {
                    query
                        .split('&')
                        .any(|p| p == k || p.starts_with(&format!("{k}=")))
                };
                // UploadPart and CreateMultipartUpload carry no conditions (the policy's
                // s3:ObjectCreationOperation exempts them); the rest must.
                let path = target.split('?').next().unwrap_or("");
                let is_object = path
                    .trim_start_matches('/')
                    .split_once('/')
                    .is_some_and(|(_, key)| !key.is_empty());
                let creates =
                    (method == "PUT" && !has("partNumber") && !has("uploadId") && is_object)
                        || (method == "POST" && has("uploadId"));
                let deletes = (method == "DELETE" && !has("uploadId") && is_object)
                    || (method == "POST" && has("delete"));
                if deletes || (creates && header(&req.head, "if-none-match").is_none()) {
                    st.denied.lock().unwrap().push(line);
                    write_message(&mut w, &error_response("403 Forbidden", "AccessDenied"))?;
                    continue;
                }
            }
        }
        let every = st.every.load(Ordering::SeqCst);
        let counted = match &*st.only.lock().unwrap() {
            Some(o) => req.head[0].contains(o.as_str()),
            None => true,
        };
        let n = if counted {
            st.count.fetch_add(1, Ordering::SeqCst) + 1
        } else {
            1
        };
        let fault = if counted && every > 0 && n.is_multiple_of(every) {
            let faults = st.faults.lock().unwrap();
            (!faults.is_empty()).then(|| faults[((n / every - 1) as usize) % faults.len()])
        } else {
            None
        };
        let is_get = req.head[0].starts_with("GET ");
        let fault = match fault {
            Some(Fault::Truncate) if !is_get => Some(Fault::SlowDown),
            f => f,
        };
        match fault {
            None => {
                let resp = forward(st, &req)?;
                write_message(&mut w, &resp)?;
            }
            Some(Fault::Slow) => {
                st.injected.lock().unwrap().slow += 1;
                std::thread::sleep(SLOW);
                let resp = forward(st, &req)?;
                write_message(&mut w, &resp)?;
            }
            Some(Fault::SlowDown) => {
                st.injected.lock().unwrap().slowdown += 1;
                write_message(&mut w, &error_response("503 Slow Down", "SlowDown"))?;
            }
            Some(Fault::Forbidden) => {
                st.injected.lock().unwrap().forbidden += 1;
                write_message(&mut w, &error_response("403 Forbidden", "AccessDenied"))?;
            }
            Some(Fault::InvalidArgument) => {
                write_message(
                    &mut w,
                    &error_response("400 Bad Request", "InvalidArgument"),
                )?;
            }
            Some(Fault::NotImplemented) => {
                write_message(
                    &mut w,
                    &error_response("501 Not Implemented", "NotImplemented"),
                )?;
            }
            Some(Fault::InternalError) => {
                st.injected.lock().unwrap().internal += 1;
                write_message(
                    &mut w,
                    &error_response("500 Internal Server Error", "InternalError"),
                )?;
            }
            Some(Fault::Reset) => {
                st.injected.lock().unwrap().reset += 1;
                drop(r);
                drop(w);
                reset(conn);
                return Ok(());
            }
            Some(Fault::Truncate) => {
                let mut resp = forward(st, &req)?;
                if resp.body.len() < 2 {
                    write_message(&mut w, &resp)?;
                    continue;
                }
                st.injected.lock().unwrap().truncate += 1;
                resp.body.truncate(resp.body.len() / 2);
                // The head still announces the full length: the client sees the body end early.
                write_message(&mut w, &resp)?;
                drop(r);
                drop(w);
                reset(conn);
                return Ok(());
            }
        }
    }
}
