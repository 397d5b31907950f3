//! A real browser for the status page's tests: Debian's Chromium, headless, driven over the
//! DevTools protocol. It records what the page logged as an error and every request it made,
//! so that a test can check there were none it should not have made.

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};
use tungstenite::{Message, WebSocket};

/// A headless Chromium with one page open.
pub struct Browser {
    child: Child,
    _profile: tempfile::TempDir,
    socket: WebSocket<TcpStream>,
    next_id: u64,
    /// Console errors and uncaught exceptions the page reported.
    pub errors: Vec<String>,
    /// Every request the page made, as `METHOD URL`.
    pub requests: Vec<String>,
}

impl Browser {
    /// Starts Chromium and opens `url` in it.
    pub fn open(url: &str) -> Browser {
        let profile = tempfile::tempdir().expect("a browser profile directory");
        let mut child = Command::new(chromium())
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--remote-debugging-port=0",
                "--window-size=1200,700",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start chromium (apt-get install chromium; scripts/test.sh does)");
        let port = devtools_port(&mut child);
        let page = page_socket_url(port);
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to DevTools");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("a read timeout");
        let (socket, _) = tungstenite::client(page.as_str(), stream).expect("DevTools WebSocket");
        let mut browser = Browser {
            child,
            _profile: profile,
            socket,
            next_id: 0,
            errors: Vec::new(),
            requests: Vec::new(),
        };
        for domain in [
            "Runtime.enable",
            "Log.enable",
            "Network.enable",
            "Page.enable",
        ] {
            browser.call(domain, json!({}));
        }
        browser.call("Page.navigate", json!({ "url": url }));
        browser
    }

    /// The value of the JavaScript `expression` in the page.
    pub fn eval(&mut self, expression: &str) -> Value {
        let answer = self.call(
            "Runtime.evaluate",
            json!({ "expression": expression, "returnByValue": true }),
        );
        answer["result"]["value"].clone()
    }

    /// Evaluates `expression` every 100 ms until `holds` its value, or `timeout` passes; the
    /// last value either way, and whether it held.
    pub fn wait_for(
        &mut self,
        expression: &str,
        timeout: Duration,
        holds: impl Fn(&Value) -> bool,
    ) -> (Value, bool) {
        let give_up = Instant::now() + timeout;
        loop {
            let value = self.eval(expression);
            if holds(&value) {
                return (value, true);
            }
            if Instant::now() >= give_up {
                return (value, false);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A PNG of the page as it shows now.
    pub fn screenshot(&mut self) -> Vec<u8> {
        let answer = self.call("Page.captureScreenshot", json!({ "format": "png" }));
        let data = answer["data"].as_str().expect("screenshot data");
        base64::engine::general_purpose::STANDARD
            .decode(data)
            .expect("a base64 PNG")
    }

    /// Sends a DevTools command and returns its result, noting the events that come meanwhile.
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let command = json!({ "id": id, "method": method, "params": params });
        self.socket
            .send(Message::text(command.to_string()))
            .expect("send to DevTools");
        loop {
            let message = self.socket.read().expect("read from DevTools");
            let Message::Text(text) = message else {
                continue;
            };
            let value: Value = serde_json::from_str(text.as_str()).expect("DevTools JSON");
            if value["id"].as_u64() == Some(id) {
                if let Some(error) = value.get("error") {
                    panic!("DevTools {method}: {error}");
                }
                return value["result"].clone();
            }
            self.note(&value);
        }
    }

    fn note(&mut self, event: &Value) {
        let params = &event["params"];
        match event["method"].as_str() {
            Some("Runtime.consoleAPICalled") if params["type"] == "error" => {
                self.errors
                    .push(format!("console.error: {}", params["args"]));
            }
            Some("Runtime.exceptionThrown") => {
                self.errors
                    .push(format!("exception: {}", params["exceptionDetails"]));
            }
            Some("Log.entryAdded") if params["entry"]["level"] == "error" => {
                self.errors
                    .push(format!("log: {}", params["entry"]["text"]));
            }
            Some("Network.requestWillBeSent") => {
                let request = &params["request"];
                if let (Some(method), Some(url)) =
                    (request["method"].as_str(), request["url"].as_str())
                {
                    self.requests.push(format!("{method} {url}"));
                }
            }
            _ => {}
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn chromium() -> String {
    std::env::var("SHIFT_CHROMIUM").unwrap_or_else(|_| "chromium".to_string())
}

/// The port of the DevTools endpoint Chromium prints on its standard error; the rest of that
/// output is drained in the background.
fn devtools_port(child: &mut Child) -> u16 {
    let stderr = child.stderr.take().expect("chromium's stderr");
    let mut lines = BufReader::new(stderr);
    let mut line = String::new();
    loop {
        line.clear();
        if lines.read_line(&mut line).expect("read chromium's stderr") == 0 {
            panic!("chromium ended without a DevTools endpoint");
        }
        if let Some(rest) = line
            .trim()
            .strip_prefix("DevTools listening on ws://127.0.0.1:")
        {
            let port = rest.split('/').next().and_then(|port| port.parse().ok());
            std::thread::spawn(move || std::io::copy(&mut lines, &mut std::io::sink()));
            return port.expect("a DevTools port");
        }
    }
}

/// The WebSocket URL of the browser's first page.
fn page_socket_url(port: u16) -> String {
    let answer = crate::HttpClient::new(port)
        .get("/json/list")
        .expect("DevTools' pages");
    let pages: Value = serde_json::from_str(&answer.body).expect("DevTools' list of pages");
    pages
        .as_array()
        .and_then(|pages| pages.iter().find(|page| page["type"] == "page"))
        .and_then(|page| page["webSocketDebuggerUrl"].as_str())
        .expect("a page to drive")
        .to_string()
}
