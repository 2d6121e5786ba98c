//! A fault-injecting HTTP proxy in front of the real S3 server: pgdr talks to it as
//! to S3, and by rule (method, path, query, the nth matching request, how many times)
//! it answers an error without forwarding, waits, cuts a request or a response short,
//! flips a byte of a response or of an upload, or acknowledges a PUT it never
//! forwarded (a lying store). Everything else goes through unchanged.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Clone, Debug)]
pub enum Fault {
    /// Answer this HTTP status with this S3 error code, without forwarding.
    Status(u16, &'static str),
    /// Wait this long, then forward.
    Delay(Duration),
    /// Read half of the request body, then close the connection.
    ResetMidBody,
    /// Forward; send the full length in the headers but half the body, then close.
    Truncate,
    /// Forward; flip one byte in the middle of the response body.
    FlipResponse,
    /// Flip one byte in the middle of the request body, then forward.
    CorruptUpload,
    /// Answer 200 with an ETag to a PUT without forwarding it.
    AckWithoutForward,
    /// Answer a DeleteObjects request with AccessDenied for every key in it (what a
    /// bucket policy or an object lock does), deleting nothing.
    RefuseDelete,
    /// Drop `If-None-Match`/`If-Match` (a store that ignores conditions), wait this
    /// long, then forward: two writers racing on one key both get through.
    IgnoreConditions(Duration),
}

#[derive(Clone, Debug)]
pub struct Rule {
    pub method: Option<&'static str>,
    /// A substring of the request path.
    pub path: String,
    /// A substring of the query string.
    pub query: Option<&'static str>,
    /// Matching requests let through before the fault starts.
    pub skip: usize,
    /// How many matching requests get the fault (`usize::MAX`: all).
    pub times: usize,
    pub fault: Fault,
}

impl Rule {
    pub fn new(method: &'static str, path: &str, fault: Fault) -> Rule {
        Rule {
            method: Some(method),
            path: path.to_string(),
            query: None,
            skip: 0,
            times: usize::MAX,
            fault,
        }
    }

    /// Every request, whatever its method and key.
    pub fn any(fault: Fault) -> Rule {
        Rule {
            method: None,
            path: String::new(),
            query: None,
            skip: 0,
            times: usize::MAX,
            fault,
        }
    }

    pub fn times(mut self, n: usize) -> Rule {
        self.times = n;
        self
    }

    pub fn skip(mut self, n: usize) -> Rule {
        self.skip = n;
        self
    }

    pub fn query(mut self, q: &'static str) -> Rule {
        self.query = Some(q);
        self
    }
}

struct Active {
    rule: Rule,
    seen: usize,
    applied: usize,
}

pub struct FaultProxy {
    pub port: u16,
    rules: Arc<Mutex<Vec<Active>>>,
    log: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

impl FaultProxy {
    /// A proxy on a free 127.0.0.1 port forwarding to `upstream` (host:port).
    pub fn start(upstream: &str) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let proxy = FaultProxy {
            port,
            rules: Arc::default(),
            log: Arc::default(),
            stop: Arc::default(),
        };
        let (rules, log, stop) = (proxy.rules.clone(), proxy.log.clone(), proxy.stop.clone());
        let upstream = upstream.to_string();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (rules, log, upstream) = (rules.clone(), log.clone(), upstream.clone());
                std::thread::spawn(move || {
                    let _ = serve(conn, &upstream, &rules, &log);
                });
            }
        });
        proxy
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn add(&self, rule: Rule) {
        self.rules.lock().unwrap().push(Active {
            rule,
            seen: 0,
            applied: 0,
        });
    }

    pub fn clear(&self) {
        self.rules.lock().unwrap().clear();
    }

    /// How many requests got a fault since the rules were last cleared.
    pub fn applied(&self) -> usize {
        self.rules.lock().unwrap().iter().map(|a| a.applied).sum()
    }

    /// Requests seen, as `METHOD path?query [fault]` lines.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

struct Request {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// A request or status line and its headers.
type Head = (String, Vec<(String, String)>);

fn read_head(r: &mut impl BufRead) -> std::io::Result<Option<Head>> {
    let mut first = String::new();
    if r.read_line(&mut first)? == 0 {
        return Ok(None);
    }
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    Ok(Some((first.trim_end().to_string(), headers)))
}

fn read_chunked(r: &mut impl BufRead) -> std::io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let mut size = String::new();
        r.read_line(&mut size)?;
        let n = usize::from_str_radix(size.trim().split(';').next().unwrap_or("0"), 16).unwrap_or(0);
        if n == 0 {
            let mut end = String::new();
            while r.read_line(&mut end)? > 0 && end.trim_end() != "" {
                end.clear();
            }
            return Ok(body);
        }
        let mut chunk = vec![0; n];
        r.read_exact(&mut chunk)?;
        body.extend(chunk);
        let mut crlf = String::new();
        r.read_line(&mut crlf)?;
    }
}

fn choose(rules: &Mutex<Vec<Active>>, req: &Request) -> Option<Fault> {
    let (path, query) = req.target.split_once('?').unwrap_or((&req.target, ""));
    let mut rules = rules.lock().unwrap();
    for a in rules.iter_mut() {
        let r = &a.rule;
        if r.method.is_some_and(|m| m != req.method)
            || !path.contains(&r.path)
            || r.query.is_some_and(|q| !query.contains(q))
        {
            continue;
        }
        a.seen += 1;
        if a.seen > r.skip && a.applied < r.times {
            a.applied += 1;
            return Some(r.fault.clone());
        }
    }
    None
}

fn respond(
    out: &mut TcpStream,
    status: u16,
    reason: &str,
    headers: &[(String, String)],
    body: &[u8],
    head_only: bool,
) -> std::io::Result<()> {
    let mut text = format!("HTTP/1.1 {status} {reason}\r\n");
    let mut has_length = false;
    for (k, v) in headers {
        if k.eq_ignore_ascii_case("transfer-encoding") || k.eq_ignore_ascii_case("connection") {
            continue;
        }
        if k.eq_ignore_ascii_case("content-length") {
            if !head_only {
                continue;
            }
            has_length = true;
        }
        text.push_str(&format!("{k}: {v}\r\n"));
    }
    if !head_only || !has_length {
        text.push_str(&format!(
            "Content-Length: {}\r\n",
            if head_only { 0 } else { body.len() }
        ));
    }
    text.push_str("\r\n");
    out.write_all(text.as_bytes())?;
    if !head_only {
        out.write_all(body)?;
    }
    out.flush()
}

fn serve(conn: TcpStream, upstream: &str, rules: &Mutex<Vec<Active>>, log: &Mutex<Vec<String>>) -> std::io::Result<()> {
    let mut out = conn.try_clone()?;
    let mut r = BufReader::new(conn);
    loop {
        let Some((first, headers)) = read_head(&mut r)? else {
            return Ok(());
        };
        let mut parts = first.split_whitespace();
        let method = parts.next().unwrap_or("").to_string();
        let target = parts.next().unwrap_or("").to_string();
        if header(&headers, "expect").is_some_and(|e| e.eq_ignore_ascii_case("100-continue")) {
            out.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        }
        let mut req = Request {
            method,
            target,
            headers,
            body: Vec::new(),
        };
        let fault = choose(rules, &req);
        log.lock()
            .unwrap()
            .push(format!("{} {} {:?}", req.method, req.target, fault));
        let length: usize = header(&req.headers, "content-length")
            .and_then(|l| l.parse().ok())
            .unwrap_or(0);
        if let Some(Fault::ResetMidBody) = fault {
            let mut half = vec![0; length / 2];
            let _ = r.read_exact(&mut half);
            return Ok(());
        }
        if header(&req.headers, "transfer-encoding").is_some_and(|t| t.contains("chunked")) {
            req.body = read_chunked(&mut r)?;
        } else {
            req.body = vec![0; length];
            r.read_exact(&mut req.body)?;
        }
        match &fault {
            Some(Fault::Status(code, s3code)) => {
                let body = format!(
                    "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{s3code}</Code><Message>injected by the test proxy</Message></Error>"
                );
                let hs = vec![("Content-Type".to_string(), "application/xml".to_string())];
                respond(&mut out, *code, "Injected", &hs, body.as_bytes(), req.method == "HEAD")?;
                continue;
            }
            Some(Fault::AckWithoutForward) => {
                let hs = vec![("ETag".to_string(), "\"00000000000000000000000000000000\"".to_string())];
                respond(&mut out, 200, "OK", &hs, b"", false)?;
                continue;
            }
            Some(Fault::RefuseDelete) => {
                let text = String::from_utf8_lossy(&req.body);
                let errors: String = text
                    .split("<Key>")
                    .skip(1)
                    .filter_map(|k| k.split("</Key>").next())
                    .map(|k| format!("<Error><Key>{k}</Key><Code>AccessDenied</Code><Message>refused by the test proxy</Message></Error>"))
                    .collect();
                let body = format!(
                    "<?xml version=\"1.0\" encoding=\"UTF-8\"?><DeleteResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">{errors}</DeleteResult>"
                );
                let hs = vec![("Content-Type".to_string(), "application/xml".to_string())];
                respond(&mut out, 200, "OK", &hs, body.as_bytes(), false)?;
                continue;
            }
            Some(Fault::Delay(d)) => std::thread::sleep(*d),
            Some(Fault::IgnoreConditions(d)) => {
                req.headers
                    .retain(|(k, _)| !k.eq_ignore_ascii_case("if-none-match") && !k.eq_ignore_ascii_case("if-match"));
                std::thread::sleep(*d);
            }
            Some(Fault::CorruptUpload) if !req.body.is_empty() => {
                let mid = req.body.len() / 2;
                req.body[mid] ^= 0x55;
            }
            _ => {}
        }
        // Forward, one upstream connection per request.
        let mut up = TcpStream::connect(upstream)?;
        let mut head = format!("{} {} HTTP/1.1\r\n", req.method, req.target);
        for (k, v) in &req.headers {
            if k.eq_ignore_ascii_case("connection")
                || k.eq_ignore_ascii_case("expect")
                || k.eq_ignore_ascii_case("transfer-encoding")
            {
                continue;
            }
            if k.eq_ignore_ascii_case("content-length") {
                continue;
            }
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str(&format!(
            "Content-Length: {}\r\nConnection: close\r\n\r\n",
            req.body.len()
        ));
        up.write_all(head.as_bytes())?;
        up.write_all(&req.body)?;
        let mut ur = BufReader::new(up);
        let Some((status_line, rheaders)) = read_head(&mut ur)? else {
            return Ok(());
        };
        let mut sp = status_line.splitn(3, ' ');
        sp.next();
        let status: u16 = sp.next().and_then(|s| s.parse().ok()).unwrap_or(502);
        let reason = sp.next().unwrap_or("").to_string();
        let head_only = req.method == "HEAD";
        let mut body = Vec::new();
        if !head_only && status != 204 && status != 304 {
            if header(&rheaders, "transfer-encoding").is_some_and(|t| t.contains("chunked")) {
                body = read_chunked(&mut ur)?;
            } else if let Some(n) = header(&rheaders, "content-length").and_then(|l| l.parse::<usize>().ok()) {
                body = vec![0; n];
                ur.read_exact(&mut body)?;
            } else {
                ur.read_to_end(&mut body)?;
            }
        }
        match fault {
            Some(Fault::FlipResponse) if !body.is_empty() => {
                let mid = body.len() / 2;
                body[mid] ^= 0x55;
            }
            Some(Fault::Truncate) if !body.is_empty() => {
                let mut text = format!("HTTP/1.1 {status} {reason}\r\n");
                for (k, v) in &rheaders {
                    if !k.eq_ignore_ascii_case("transfer-encoding")
                        && !k.eq_ignore_ascii_case("connection")
                        && !k.eq_ignore_ascii_case("content-length")
                    {
                        text.push_str(&format!("{k}: {v}\r\n"));
                    }
                }
                text.push_str(&format!("Content-Length: {}\r\nConnection: close\r\n\r\n", body.len()));
                out.write_all(text.as_bytes())?;
                out.write_all(&body[..body.len() / 2])?;
                out.flush()?;
                return Ok(());
            }
            _ => {}
        }
        respond(&mut out, status, &reason, &rheaders, &body, head_only)?;
    }
}
