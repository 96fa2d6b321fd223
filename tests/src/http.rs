//! The HTTP/1.1 the pod servers speak, client side: one request on a kept
//! alive connection, its response body back.
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;

/// Sends one `GET /` that asks the server to close, reads the response to
/// its end and returns the body. The caller sets the timeouts.
pub fn get_and_close(s: TcpStream) -> std::io::Result<String> {
    get_path_and_close(s, "/")
}

/// Like [`get_and_close`], for `path`.
pub fn get_path_and_close(mut s: TcpStream, path: &str) -> std::io::Result<String> {
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    Ok(resp
        .rsplit("\r\n\r\n")
        .next()
        .unwrap_or("")
        .trim()
        .to_string())
}

/// Connects to `addr` and POSTs `len` bytes, asking the server to close;
/// returns the whole response. Each read and write gives up after 15 s:
/// an upload that stalls (path MTU discovery broken) fails, not hangs.
pub fn upload(addr: std::net::SocketAddr, len: usize) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(2))?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(15)))?;
    s.set_write_timeout(Some(std::time::Duration::from_secs(15)))?;
    let head =
        format!("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n");
    s.write_all(head.as_bytes())?;
    s.write_all(&vec![0x5a; len])?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    Ok(resp)
}

/// One kept-alive connection.
pub struct Conn {
    w: TcpStream,
    r: BufReader<TcpStream>,
}

impl Conn {
    pub fn new(stream: TcpStream) -> std::io::Result<Self> {
        Ok(Conn {
            w: stream.try_clone()?,
            r: BufReader::new(stream),
        })
    }

    /// The socket, to close it in a way of the caller's choosing.
    pub fn into_stream(self) -> TcpStream {
        self.w
    }

    /// Sends `GET /` and returns the response body.
    pub fn get(&mut self) -> std::io::Result<Vec<u8>> {
        self.w.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")?;
        let mut len = 0usize;
        loop {
            let mut h = String::new();
            if self.r.read_line(&mut h)? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            if let Some(v) = h.strip_prefix("Content-Length: ") {
                len = v.trim().parse().unwrap_or(0);
            }
            if h == "\r\n" {
                break;
            }
        }
        let mut body = vec![0; len];
        self.r.read_exact(&mut body)?;
        Ok(body)
    }
}
