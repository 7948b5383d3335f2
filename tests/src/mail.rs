//! A real SMTP server for the tests (the `mailin-embedded` crate's): the host sends to it over
//! SMTP as to any mail server, and the tests read what it received.

use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mailin_embedded::{Handler, Response, Server, response};

/// An email as the server received it.
#[derive(Debug, Clone)]
pub struct Mail {
    pub from: String,
    pub to: Vec<String>,
    /// The message as sent: headers and (encoded) body.
    pub data: String,
}

impl Mail {
    /// The message with quoted-printable soft line breaks joined, for reading its text.
    pub fn text(&self) -> String {
        self.data.replace("=\r\n", "").replace("=\n", "")
    }

    /// The six digits after `after` in the message's text.
    pub fn code_after(&self, after: &str) -> String {
        let text = self.text();
        let start = text.find(after).unwrap_or_else(|| panic!("no {after:?} in {text}")) + after.len();
        text[start..].chars().take(6).collect()
    }
}

/// An SMTP server on 127.0.0.1 collecting what it receives.
pub struct MailServer {
    pub port: u16,
    received: Arc<Mutex<Vec<Mail>>>,
}

#[derive(Clone)]
struct Collector {
    received: Arc<Mutex<Vec<Mail>>>,
    current: Option<Mail>,
}

impl Handler for Collector {
    fn data_start(&mut self, _domain: &str, from: &str, _is8bit: bool, to: &[String]) -> Response {
        self.current = Some(Mail { from: from.to_string(), to: to.to_vec(), data: String::new() });
        response::OK
    }

    fn data(&mut self, buf: &[u8]) -> std::io::Result<()> {
        if let Some(mail) = &mut self.current {
            mail.data.push_str(&String::from_utf8_lossy(buf));
        }
        Ok(())
    }

    fn data_end(&mut self) -> Response {
        if let Some(mail) = self.current.take() {
            self.received.lock().unwrap().push(mail);
        }
        response::OK
    }
}

impl MailServer {
    /// A free port on 127.0.0.1, nothing listening on it: an SMTP server that is down, until
    /// [`MailServer::start_on`] starts one there.
    pub fn free_port() -> u16 {
        TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
    }

    /// Starts a server on a free port.
    pub fn start() -> Self {
        Self::start_on(Self::free_port())
    }

    /// Starts a server on `port` (it serves until the test process ends).
    pub fn start_on(port: u16) -> Self {
        let received = Arc::new(Mutex::new(Vec::new()));
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("the SMTP port is free");
        let mut server = Server::new(Collector { received: received.clone(), current: None });
        server.with_name("mail.test").with_num_threads(4).with_tcp_listener(listener);
        std::thread::spawn(move || {
            server.serve().ok();
        });
        Self { port, received }
    }

    /// The host's `--smtp-url` for a server on `port`.
    pub fn url_of(port: u16) -> String {
        format!("smtp://127.0.0.1:{port}")
    }

    pub fn url(&self) -> String {
        Self::url_of(self.port)
    }

    /// Everything received so far.
    pub fn received(&self) -> Vec<Mail> {
        self.received.lock().unwrap().clone()
    }

    /// The mails to `to` received so far.
    pub fn to(&self, to: &str) -> Vec<Mail> {
        self.received().into_iter().filter(|mail| mail.to.iter().any(|rcpt| rcpt == to)).collect()
    }

    /// Waits up to 30 s for a mail to `to` whose text contains `containing`.
    pub async fn wait_for(&self, to: &str, containing: &str) -> Mail {
        let started = Instant::now();
        loop {
            if let Some(mail) = self.to(to).into_iter().find(|mail| mail.text().contains(containing)) {
                return mail;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "no mail to {to} containing {containing:?}; received: {:?}",
                self.to(to)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
