//! The fleet's shared state in etcd v3, under one prefix (keys in `shift_wire::fleet`): the
//! desired state of each upstream, written by compare-and-swap; the hosts' reports, held by
//! their agents' leases; and the hosts that joined.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{
    AlarmAction, AlarmType, Certificate, Client, Compare, CompareOp, ConnectOptions, GetOptions,
    Identity, KeyValue, PutOptions, TlsOptions, Txn, TxnOp, WatchOptions, WatchStream,
};
use serde::de::DeserializeOwned;

use super::not_etcd::not_etcd_at;
use crate::client::root_cause;
use shift_wire::fleet::{self, DesiredUpstream, HostReport, Member};

/// Where etcd is and how to reach it: `--etcd`, `--etcd-prefix`, `--etcd-ca/cert/key`.
#[derive(Debug, Clone)]
pub struct EtcdOptions {
    pub endpoints: Vec<String>,
    pub prefix: String,
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// What can go wrong with the shared state.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "cannot reach etcd at {endpoints} ({reason}): is it running there? (set it with --etcd \
         or SHIFT_ETCD)"
    )]
    Unreachable { endpoints: String, reason: String },
    #[error("cannot read {path} for etcd TLS: {reason}")]
    Tls { path: PathBuf, reason: String },
    #[error("--etcd-cert and --etcd-key go together: give both, or neither")]
    HalfIdentity,
    #[error(
        "what answers at {endpoints} is not etcd ({found}): give --etcd (or SHIFT_ETCD) etcd's \
         client URL, e.g. http://HOST:2379"
    )]
    NotEtcd { endpoints: String, found: String },
    #[error(
        "etcd is out of space ({0}): it refused this write; compact and defragment it, then \
         disarm the alarm (\"etcdctl alarm disarm\"); see docs/fleet.md, \"Keeping etcd small\""
    )]
    NoSpace(String),
    #[error("etcd refused the request: {0}")]
    Etcd(String),
    #[error("{key} in etcd is not valid JSON of its kind ({reason}): fix or delete it")]
    BadValue { key: String, reason: String },
    #[error(
        "the desired state of upstream {upstream} changed in etcd since it was read (another \
         shiftctl?): nothing was written; look at \"shiftctl status --fleet\" and run the \
         command again"
    )]
    Conflict { upstream: String },
    #[error("revision {revision} is compacted in etcd: re-list")]
    Compacted { revision: i64 },
}

/// A value and the etcd revision that last wrote it.
#[derive(Debug, Clone)]
pub struct Versioned<T> {
    pub value: T,
    pub mod_revision: i64,
}

/// Every upstream's desired state, as of one etcd revision.
#[derive(Debug, Clone, Default)]
pub struct DesiredSnapshot {
    pub upstreams: BTreeMap<String, Versioned<DesiredUpstream>>,
    pub revision: i64,
    /// The upstreams whose key holds no desired state this shiftctl can read, with why: left
    /// out, the others applied, and each reported as a problem.
    pub unreadable: BTreeMap<String, String>,
}

/// A connection to etcd and the prefix the fleet's keys live under. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    client: Client,
    prefix: String,
    endpoints: String,
    /// Whether etcd answered through this connection once: until then a failure may be a
    /// server that is not etcd; after it, it is etcd going away.
    answered: Arc<AtomicBool>,
}

impl Store {
    pub async fn connect(options: &EtcdOptions) -> Result<Store, StoreError> {
        let endpoints = options.endpoints.join(",");
        let mut connect = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(3))
            .with_timeout(Duration::from_secs(5))
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2));
        if let Some(tls) = tls_options(options)? {
            connect = connect.with_tls(tls);
        }
        let client = Client::connect(&options.endpoints, Some(connect))
            .await
            .map_err(|err| StoreError::Unreachable {
                endpoints: endpoints.clone(),
                reason: root_cause(&err),
            })?;
        Ok(Store {
            client,
            prefix: options.prefix.clone(),
            endpoints,
            answered: Arc::new(AtomicBool::new(false)),
        })
    }

    fn note_answer(&self) {
        self.answered.store(true, Ordering::Relaxed);
    }

    /// Whether etcd answered through this connection once.
    pub fn has_answered(&self) -> bool {
        self.answered.load(Ordering::Relaxed)
    }

    fn failed(&self, err: etcd_client::Error) -> StoreError {
        let unreachable = |reason: String| StoreError::Unreachable {
            endpoints: self.endpoints.clone(),
            reason,
        };
        let etcd_client::Error::GRpcStatus(status) = &err else {
            return unreachable(root_cause(&err));
        };
        let message = status.message();
        if message.contains("database space exceeded") {
            return StoreError::NoSpace(message.to_string());
        }
        // A server that does not speak gRPC (an HTTP/1 server, a TLS port spoken to in clear)
        // breaks HTTP/2 framing or closes the connection; a gRPC server that is not etcd lacks
        // etcd's services. Only asked before etcd ever answered: afterwards such errors are
        // etcd restarting (a reset connection is an HTTP/2 error too).
        let broken = status.code() == tonic::Code::Unimplemented
            || message.contains("protocol error")
            || message.contains("content-type")
            || message.contains("transport error");
        if broken && !self.has_answered() {
            return match not_etcd_at(&self.endpoints) {
                Some(found) => StoreError::NotEtcd {
                    endpoints: self.endpoints.clone(),
                    found,
                },
                None => unreachable(message.to_string()),
            };
        }
        match status.code() {
            tonic::Code::Unavailable => unreachable(root_cause(status)),
            _ if broken => unreachable(message.to_string()),
            // No answer in time from a server that never answered: as good as none.
            tonic::Code::DeadlineExceeded | tonic::Code::Cancelled if !self.has_answered() => {
                unreachable(message.to_string())
            }
            _ => StoreError::Etcd(message.to_string()),
        }
    }

    /// One upstream's desired state, if it has one.
    pub async fn desired(
        &self,
        upstream: &str,
    ) -> Result<Option<Versioned<DesiredUpstream>>, StoreError> {
        self.get_one(&fleet::upstream_key(&self.prefix, upstream))
            .await
    }

    /// The value at `key` and the revision that wrote it, if there is one.
    async fn get_one<T: DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<Versioned<T>>, StoreError> {
        self.get_raw(key)
            .await?
            .map(|kv| {
                Ok(Versioned {
                    value: parse(key, kv.value())?,
                    mod_revision: kv.mod_revision(),
                })
            })
            .transpose()
    }

    async fn get_raw(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let mut response = self
            .client
            .clone()
            .get(key, None)
            .await
            .inspect(|_| self.note_answer())
            .map_err(|err| self.failed(err))?;
        Ok(response.take_kvs().into_iter().next())
    }

    /// Every upstream's desired state, now (`at: None`) or as it was at a past revision.
    pub async fn desired_snapshot(&self, at: Option<i64>) -> Result<DesiredSnapshot, StoreError> {
        let prefix = format!("{}upstreams/", self.prefix);
        let mut options = GetOptions::new().with_prefix();
        if let Some(revision) = at {
            options = options.with_revision(revision);
        }
        let response = match self
            .client
            .clone()
            .get(prefix.as_str(), Some(options))
            .await
        {
            Ok(response) => {
                self.note_answer();
                response
            }
            Err(etcd_client::Error::GRpcStatus(status))
                if at.is_some() && status.message().contains("compacted") =>
            {
                let revision = at.unwrap_or_default();
                return Err(StoreError::Compacted { revision });
            }
            Err(err) => return Err(self.failed(err)),
        };
        let mut snapshot = DesiredSnapshot {
            revision: at.unwrap_or_else(|| header_revision(response.header())),
            ..Default::default()
        };
        for kv in response.kvs() {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            let name = key[prefix.len()..].to_string();
            // One bad key must not keep every other upstream from its desired state.
            let value = match parse(&key, kv.value()) {
                Ok(value) => value,
                Err(err) => {
                    snapshot.unreadable.insert(name, err.to_string());
                    continue;
                }
            };
            let mod_revision = kv.mod_revision();
            snapshot.upstreams.insert(
                name,
                Versioned {
                    value,
                    mod_revision,
                },
            );
        }
        Ok(snapshot)
    }

    /// Writes an upstream's desired state if nobody wrote it since `read_revision` (0: it had
    /// none). Returns the revision of the write.
    pub async fn write_desired(
        &self,
        upstream: &str,
        desired: &DesiredUpstream,
        read_revision: i64,
    ) -> Result<i64, StoreError> {
        let key = fleet::upstream_key(&self.prefix, upstream);
        let value = serde_json::to_vec(desired).expect("desired state serializes");
        let unchanged = Compare::mod_revision(key.as_str(), CompareOp::Equal, read_revision);
        let txn = Txn::new()
            .when([unchanged])
            .and_then([TxnOp::put(key.as_str(), value, None)]);
        let response = self
            .client
            .clone()
            .txn(txn)
            .await
            .inspect(|_| self.note_answer())
            .map_err(|err| self.failed(err))?;
        if !response.succeeded() {
            let upstream = upstream.to_string();
            return Err(StoreError::Conflict { upstream });
        }
        Ok(header_revision(response.header()))
    }

    /// The stable set recorded for an upstream (JSON), if any.
    pub async fn stable(&self, upstream: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let key = fleet::stable_key(&self.prefix, upstream);
        Ok(self.get_raw(&key).await?.map(|kv| kv.value().to_vec()))
    }

    pub async fn put_stable(&self, upstream: &str, json: &[u8]) -> Result<(), StoreError> {
        self.put(
            fleet::stable_key(&self.prefix, upstream),
            json.to_vec(),
            None,
        )
        .await
    }

    async fn put(
        &self,
        key: String,
        value: Vec<u8>,
        options: Option<PutOptions>,
    ) -> Result<(), StoreError> {
        self.client
            .clone()
            .put(key, value, options)
            .await
            .inspect(|_| self.note_answer())
            .map_err(|err| self.failed(err))?;
        Ok(())
    }

    /// The reports of the hosts whose agents are alive. A report this build cannot read (an
    /// agent of another version, a value written by hand) stands for a host with that problem
    /// and no upstream: it is not in sync, and it stops nothing else.
    pub async fn reports(&self) -> Result<Vec<HostReport>, StoreError> {
        let prefix = format!("{}hosts/", self.prefix);
        let listed = self.list(&prefix).await?;
        Ok(listed
            .into_iter()
            .map(|(host, read)| read.unwrap_or_else(|why| unreadable_report(host, why)))
            .collect())
    }

    /// Every host that ever joined (one whose key this build cannot read, with the revision it
    /// names if any).
    pub async fn members(&self) -> Result<Vec<Member>, StoreError> {
        let prefix = format!("{}members/", self.prefix);
        let listed = self.list(&prefix).await?;
        Ok(listed
            .into_iter()
            .map(|(host, read)| {
                read.unwrap_or_else(|why| Member {
                    applied_revision: why.applied_revision,
                    written_by: why.written_by,
                    host,
                })
            })
            .collect())
    }

    /// One host's membership, if it joined before.
    pub async fn member(&self, host: &str) -> Result<Option<Member>, StoreError> {
        let found = self.get_one(&fleet::member_key(&self.prefix, host)).await?;
        Ok(found.map(|member: Versioned<Member>| member.value))
    }

    /// Every value under `prefix`, by the rest of its key: read, or why not.
    async fn list<T: DeserializeOwned>(
        &self,
        prefix: &str,
    ) -> Result<Vec<(String, Result<T, Unreadable>)>, StoreError> {
        let options = GetOptions::new().with_prefix();
        let response = self
            .client
            .clone()
            .get(prefix, Some(options))
            .await
            .inspect(|_| self.note_answer())
            .map_err(|err| self.failed(err))?;
        Ok(response
            .kvs()
            .iter()
            .map(|kv| {
                let key = String::from_utf8_lossy(kv.key()).into_owned();
                let read =
                    parse(&key, kv.value()).map_err(|err| Unreadable::of(&key, err, kv.value()));
                (key[prefix.len()..].to_string(), read)
            })
            .collect())
    }

    pub async fn put_member(&self, member: &Member) -> Result<(), StoreError> {
        let key = fleet::member_key(&self.prefix, &member.host);
        let value = serde_json::to_vec(member).expect("member serializes");
        self.put(key, value, None).await
    }

    /// Publishes a host's report under `lease`: it vanishes when the agent stops renewing it.
    pub async fn put_report(&self, report: &HostReport, lease: i64) -> Result<(), StoreError> {
        let key = fleet::report_key(&self.prefix, &report.host);
        let value = serde_json::to_vec(report).expect("report serializes");
        let options = PutOptions::new().with_lease(lease);
        self.put(key, value, Some(options)).await
    }

    /// A new lease of `ttl`, and a task that renews it every third of it until the lease is
    /// lost (etcd unreachable for longer than `ttl`) or the task is dropped.
    pub async fn lease(&self, ttl: Duration) -> Result<Lease, StoreError> {
        let seconds = ttl.as_secs().max(1) as i64;
        let mut client = self.client.clone();
        let granted = client
            .lease_grant(seconds, None)
            .await
            .inspect(|_| self.note_answer())
            .map_err(|err| self.failed(err))?;
        let id = granted.id();
        let (mut keeper, mut responses) = client
            .lease_keep_alive(id)
            .await
            .inspect(|_| self.note_answer())
            .map_err(|err| self.failed(err))?;
        let period = Duration::from_millis((seconds as u64 * 1000 / 3).max(300));
        let renewal = tokio::spawn(async move {
            loop {
                tokio::time::sleep(period).await;
                if keeper.keep_alive().await.is_err() {
                    return;
                }
                match responses.message().await {
                    Ok(Some(response)) if response.ttl() > 0 => {}
                    _ => return,
                }
            }
        });
        Ok(Lease { id, renewal })
    }

    /// Asks the agents for fresh counters for as long as the returned lease lives (renewed
    /// until it is dropped, then gone within `ttl`): one write.
    pub async fn want_fresh_reports(&self, ttl: Duration) -> Result<Lease, StoreError> {
        let lease = self.lease(ttl).await?;
        let options = PutOptions::new().with_lease(lease.id);
        let key = fleet::fresh_reports_key(&self.prefix);
        self.put(key, b"1".to_vec(), Some(options)).await?;
        Ok(lease)
    }

    /// Whether a command asks for fresh counters now (a read: no revision).
    pub async fn fresh_reports_wanted(&self) -> bool {
        let key = fleet::fresh_reports_key(&self.prefix);
        matches!(self.get_raw(&key).await, Ok(Some(_)))
    }

    /// etcd's active alarms, e.g. "NOSPACE on member 8e9e05c52164694d": while one is raised,
    /// etcd refuses writes, so no desired state changes and no host reports anew.
    pub async fn alarms(&self) -> Result<Vec<String>, StoreError> {
        let response = self
            .client
            .clone()
            .alarm(AlarmAction::Get, AlarmType::None, None)
            .await
            .inspect(|_| self.note_answer())
            .map_err(|err| self.failed(err))?;
        Ok(response
            .alarms()
            .iter()
            .map(|alarm| {
                format!(
                    "{} on member {:x}",
                    alarm.alarm().as_str_name(),
                    alarm.member_id()
                )
            })
            .collect())
    }

    /// Watches every desired state from `revision` on.
    pub async fn watch_desired(&self, revision: i64) -> Result<WatchStream, StoreError> {
        let prefix = format!("{}upstreams/", self.prefix);
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(revision);
        self.client
            .clone()
            .watch(prefix.as_str(), Some(options))
            .await
            .inspect(|_| self.note_answer())
            .map_err(|err| self.failed(err))
    }

    /// The upstream a desired-state key names, if it is one.
    pub fn upstream_of<'k>(&self, key: &'k [u8]) -> Option<&'k str> {
        let key = std::str::from_utf8(key).ok()?;
        key.strip_prefix(&self.prefix)?.strip_prefix("upstreams/")
    }
}

/// A lease being renewed; dropping it stops the renewal (the lease then expires).
pub struct Lease {
    pub id: i64,
    renewal: tokio::task::JoinHandle<()>,
}

impl Lease {
    /// Whether the renewal stopped: the lease is lost, or about to be.
    pub fn is_lost(&self) -> bool {
        self.renewal.is_finished()
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.renewal.abort();
    }
}

fn tls_options(options: &EtcdOptions) -> Result<Option<TlsOptions>, StoreError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|err| StoreError::Tls {
            path: path.to_path_buf(),
            reason: err.to_string(),
        })
    };
    let identity = match (&options.cert, &options.key) {
        (Some(cert), Some(key)) => Some(Identity::from_pem(read(cert)?, read(key)?)),
        (None, None) => None,
        _ => return Err(StoreError::HalfIdentity),
    };
    if options.ca.is_none() && identity.is_none() {
        return Ok(None);
    }
    let mut tls = TlsOptions::new();
    if let Some(ca) = &options.ca {
        tls = tls.ca_certificate(Certificate::from_pem(read(ca)?));
    }
    if let Some(identity) = identity {
        tls = tls.identity(identity);
    }
    Ok(Some(tls))
}

/// A value this build cannot read, and what can still be told of it.
struct Unreadable {
    key: String,
    reason: String,
    applied_revision: i64,
    written_by: String,
}

impl Unreadable {
    fn of(key: &str, error: StoreError, value: &[u8]) -> Unreadable {
        let loose: serde_json::Value = serde_json::from_slice(value).unwrap_or_default();
        Unreadable {
            key: key.to_string(),
            reason: match error {
                StoreError::BadValue { reason, .. } => reason,
                other => other.to_string(),
            },
            applied_revision: loose["applied_revision"].as_i64().unwrap_or_default(),
            written_by: loose["written_by"].as_str().unwrap_or_default().to_string(),
        }
    }
}

/// The report of a host whose key holds no report this build can read.
fn unreadable_report(host: String, unreadable: Unreadable) -> HostReport {
    let writer = match unreadable.written_by.as_str() {
        "" => String::new(),
        writer => format!(" (written by {writer})"),
    };
    HostReport {
        problems: vec![format!(
            "{} is not a report this shiftctl can read{writer} ({}); this host counts as not in \
             sync until its agent and this shiftctl are of one version",
            unreadable.key, unreadable.reason
        )],
        host,
        written_by: unreadable.written_by,
        applied_revision: unreadable.applied_revision,
        ..Default::default()
    }
}

fn parse<T: DeserializeOwned>(key: &str, value: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(value).map_err(|err| StoreError::BadValue {
        key: key.to_string(),
        reason: err.to_string(),
    })
}

fn header_revision(header: Option<&etcd_client::ResponseHeader>) -> i64 {
    header.map(|header| header.revision()).unwrap_or_default()
}
