//! A pod's server, like the seeds' `serve_hostname`: answers every HTTP
//! request on TCP and every datagram on UDP with its own name. HTTP
//! connections are kept alive unless the client asks to close, so one
//! connection can carry many exchanges. A request body (an upload) is read
//! in full and its size is answered after the name. `GET /whoami` (and a
//! datagram `whoami`) is answered with the name and the address the
//! request came from: what the pod sees of its client.
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};

fn serve_http(stream: TcpStream, name: &str) {
    let peer = stream
        .peer_addr()
        .map(|a| a.ip().to_canonical().to_string())
        .unwrap_or_default();
    let mut reader = BufReader::new(match stream.try_clone() {
        Ok(s) => s,
        Err(_) => return,
    });
    let mut out = stream;
    loop {
        let mut close = false;
        let mut upload: Option<u64> = None;
        let mut line = String::new();
        // Request line, then headers up to the blank line.
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let whoami = line.starts_with("GET /whoami ");
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let lower = h.to_ascii_lowercase();
            if lower.starts_with("connection: close") {
                close = true;
            }
            if let Some(v) = lower.strip_prefix("content-length:") {
                upload = v.trim().parse().ok();
            }
            if h == "\r\n" || h == "\n" {
                break;
            }
        }
        let body = match upload {
            Some(n) => {
                let got =
                    std::io::copy(&mut (&mut reader).take(n), &mut std::io::sink()).unwrap_or(0);
                if got < n {
                    return;
                }
                format!("{name} received {got}\n")
            }
            None if whoami => format!("{name} {peer}\n"),
            None => format!("{name}\n"),
        };
        let resp = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n{}\r\n{body}",
            body.len(),
            if close { "Connection: close\r\n" } else { "" }
        );
        if out.write_all(resp.as_bytes()).is_err() || close {
            return;
        }
    }
}

/// SCTP (one-to-one style) on `port`, where the kernel has it: each
/// association is told the pod's name and closed. Dual-stack (IPv4
/// arrives v4-mapped), IPv4 alone where the namespace has no IPv6.
fn serve_sctp(port: u16, name: String) {
    use socket2::{Domain, Protocol, Socket, Type};
    let open = |domain: Domain, addr: std::net::SocketAddr| -> std::io::Result<Socket> {
        let s = Socket::new(domain, Type::STREAM, Some(Protocol::from(132)))?;
        if domain == Domain::IPV6 {
            s.set_only_v6(false)?;
        }
        s.set_reuse_address(true)?;
        s.bind(&addr.into())?;
        s.listen(64)?;
        Ok(s)
    };
    let Ok(listener) = open(Domain::IPV6, (std::net::Ipv6Addr::UNSPECIFIED, port).into())
        .or_else(|_| open(Domain::IPV4, (std::net::Ipv4Addr::UNSPECIFIED, port).into()))
    else {
        return; // No SCTP in this kernel.
    };
    std::thread::spawn(move || {
        while let Ok((mut conn, _)) = listener.accept() {
            let _ = conn.write_all(format!("{name}\n").as_bytes());
        }
    });
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mut name = String::from("pod");
    let mut port: u16 = 9376;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--name" => name = args.next().expect("--name VALUE"),
            "--port" => port = args.next().and_then(|p| p.parse().ok()).expect("--port N"),
            other => panic!("unknown argument {other}"),
        }
    }
    // Dual-stack sockets (IPv4 arrives v4-mapped), IPv4 alone where the
    // namespace has no IPv6.
    let udp = UdpSocket::bind(("::", port))
        .or_else(|_| UdpSocket::bind(("0.0.0.0", port)))
        .expect("bind udp");
    let udp_name = name.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok((n, peer)) = udp.recv_from(&mut buf) {
            let answer = if &buf[..n] == b"whoami" {
                format!("{udp_name} {}\n", peer.ip().to_canonical())
            } else {
                format!("{udp_name}\n")
            };
            let _ = udp.send_to(answer.as_bytes(), peer);
        }
    });
    serve_sctp(port, name.clone());
    let listener = TcpListener::bind(("::", port))
        .or_else(|_| TcpListener::bind(("0.0.0.0", port)))
        .expect("bind tcp");
    for stream in listener.incoming().flatten() {
        let n = name.clone();
        std::thread::spawn(move || serve_http(stream, &n));
    }
}
