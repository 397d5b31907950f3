//! Steady traffic through Nginx while a test changes things: requests on new connections (so
//! that every worker takes some) from a few threads, until stopped; then who answered and
//! what failed.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crate::HttpClient;

type Seen = (BTreeMap<String, u64>, Vec<String>);

pub struct Traffic {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<Seen>>,
}

/// What the traffic saw: answers by body, and each failure (a status other than 200, or an
/// error) as text.
#[derive(Debug, Default)]
pub struct TrafficReport {
    pub answers: BTreeMap<String, u64>,
    pub failed: Vec<String>,
}

impl TrafficReport {
    pub fn total(&self) -> u64 {
        self.answers.values().sum()
    }
}

impl Traffic {
    /// `threads` threads sending `GET /` to 127.0.0.1:`port`, each as fast as it is answered.
    pub fn start(port: u16, threads: usize) -> Traffic {
        Traffic::with_pause(port, threads, Duration::ZERO)
    }

    /// One thread sending `GET /` to 127.0.0.1:`port` every `pause` after the last answer: a
    /// request loop that counts failures through a long deploy without loading the machine.
    pub fn paced(port: u16, pause: Duration) -> Traffic {
        Traffic::with_pause(port, 1, pause)
    }

    fn with_pause(port: u16, threads: usize, pause: Duration) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..threads)
            .map(|_| {
                let stop = stop.clone();
                thread::spawn(move || {
                    let (mut answers, mut failed) = (BTreeMap::new(), Vec::new());
                    while !stop.load(Ordering::Relaxed) {
                        match HttpClient::new(port).get("/") {
                            Ok(response) if response.status == 200 => {
                                *answers.entry(response.body).or_insert(0) += 1
                            }
                            Ok(response) => {
                                failed.push(format!("{} {}", response.status, response.body))
                            }
                            Err(err) => failed.push(err.to_string()),
                        }
                        thread::sleep(pause);
                    }
                    (answers, failed)
                })
            })
            .collect();
        Traffic { stop, threads }
    }

    /// Stops the threads and adds up what they saw.
    pub fn stop(self) -> TrafficReport {
        self.stop.store(true, Ordering::Relaxed);
        let mut report = TrafficReport::default();
        for thread in self.threads {
            let (answers, failed) = thread.join().expect("a traffic thread");
            for (body, count) in answers {
                *report.answers.entry(body).or_insert(0) += count;
            }
            report.failed.extend(failed);
        }
        report
    }
}
