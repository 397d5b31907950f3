//! The Grafana dashboard in examples/grafana/ asks only for what a real Nginx exports: every
//! query parses as PromQL, and every metric, label and label value it names is in a `/metrics`
//! scrape taken as Prometheus would take it (over TCP, `shift_api readers=any`).

use std::collections::{BTreeMap, BTreeSet};

use harness::{free_port, Backend, HttpClient, Nginx, NginxOptions};
use prometheus_parse::{Scrape, Value};
use promql_parser::label::MatchOp;
use promql_parser::parser::{self, Expr, LabelModifier, VectorSelector};
use promql_parser::util::{walk_expr, ExprVisitor};
use serde_json::Value as Json;

const DASHBOARD: &str = include_str!("../examples/grafana/nginx-shift.json");

/// Each metric name in a scrape (histograms as their `_bucket`, `_sum` and `_count` series)
/// with the values each of its labels takes.
type Exported = BTreeMap<String, BTreeMap<String, BTreeSet<String>>>;

/// Labels that Prometheus adds to every series it scrapes.
const TARGET_LABELS: [&str; 2] = ["instance", "job"];

fn exported(text: &str) -> Exported {
    let scrape = Scrape::parse(text.lines().map(|line| Ok(line.to_owned()))).expect("valid scrape");
    let mut exported = Exported::new();
    for sample in &scrape.samples {
        let mut labels: Vec<(String, String)> = sample
            .labels
            .iter()
            .map(|(name, value)| (name.clone(), value.clone()))
            .collect();
        let names = match &sample.value {
            Value::Histogram(buckets) => {
                labels.extend(
                    buckets
                        .iter()
                        .map(|b| ("le".to_owned(), b.less_than.to_string())),
                );
                ["_bucket", "_sum", "_count"]
                    .map(|suffix| format!("{}{suffix}", sample.metric))
                    .to_vec()
            }
            _ => vec![sample.metric.clone()],
        };
        for name in names {
            let metric = exported.entry(name).or_default();
            for (label, value) in &labels {
                metric
                    .entry(label.clone())
                    .or_default()
                    .insert(value.clone());
            }
        }
    }
    exported
}

/// Every PromQL expression in the dashboard, with Grafana's variables given values as Grafana
/// would: panel targets, annotations, and the selectors inside `label_values(...)` variables.
fn queries(dashboard: &Json) -> Vec<String> {
    let mut found = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            found.push(target["expr"].as_str().expect("expr").to_owned());
        }
    }
    for annotation in dashboard["annotations"]["list"]
        .as_array()
        .expect("annotations")
    {
        if let Some(expr) = annotation["expr"].as_str() {
            found.push(expr.to_owned());
        }
    }
    for variable in dashboard["templating"]["list"]
        .as_array()
        .expect("templating")
    {
        if let Some(query) = variable["query"]["query"].as_str() {
            let inner = query
                .strip_prefix("label_values(")
                .and_then(|rest| rest.rsplit_once(','))
                .map(|(selector, _label)| selector)
                .unwrap_or_else(|| panic!("unexpected variable query {query}"));
            found.push(inner.to_owned());
        }
    }
    found
        .into_iter()
        .map(|expr| {
            expr.replace("$__rate_interval", "1m")
                .replace("$instance", ".*")
                .replace("$upstream", ".*")
        })
        .collect()
}

/// What a query selects and groups by.
#[derive(Default)]
struct Uses {
    selectors: Vec<VectorSelector>,
    grouping: Vec<String>,
}

impl ExprVisitor for Uses {
    type Error = String;

    fn pre_visit(&mut self, expr: &Expr) -> Result<bool, String> {
        match expr {
            Expr::VectorSelector(selector) => self.selectors.push(selector.clone()),
            Expr::MatrixSelector(matrix) => self.selectors.push(matrix.vs.clone()),
            Expr::Aggregate(aggregate) => {
                if let Some(LabelModifier::Include(labels)) = &aggregate.modifier {
                    self.grouping.extend(labels.labels.iter().cloned());
                }
            }
            _ => {}
        }
        Ok(true)
    }
}

/// Where each metric query of the dashboard goes wrong against `exported`; empty when none does.
fn mismatches(query: &str, exported: &Exported) -> Vec<String> {
    let expr = match parser::parse(query) {
        Ok(expr) => expr,
        Err(err) => return vec![format!("not PromQL ({err}): {query}")],
    };
    let mut uses = Uses::default();
    walk_expr(&mut uses, &expr).expect("walk");
    let mut wrong = Vec::new();
    let mut known_labels: BTreeSet<&str> = TARGET_LABELS.into();
    for selector in &uses.selectors {
        let name = selector.name.as_deref().unwrap_or_default();
        let Some(labels) = exported.get(name) else {
            wrong.push(format!("no metric {name:?} in the scrape"));
            continue;
        };
        known_labels.extend(labels.keys().map(String::as_str));
        for matcher in &selector.matchers.matchers {
            if TARGET_LABELS.contains(&matcher.name.as_str()) {
                continue;
            }
            let values = labels.get(&matcher.name);
            match (&matcher.op, values) {
                (_, None) => wrong.push(format!("{name} has no label {:?}", matcher.name)),
                (MatchOp::Equal, Some(values)) if !values.contains(&matcher.value) => {
                    wrong.push(format!(
                        "{name} never has {}={:?}: {values:?}",
                        matcher.name, matcher.value
                    ))
                }
                _ => {}
            }
        }
    }
    for label in &uses.grouping {
        if !known_labels.contains(label.as_str()) {
            wrong.push(format!(
                "grouped by {label:?}, which no metric it reads has"
            ));
        }
    }
    wrong
}

#[test]
fn every_dashboard_query_reads_exported_metrics() {
    let dashboard: Json = serde_json::from_str(DASHBOARD).expect("the dashboard is JSON");
    let titles: Vec<&str> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|panel| panel["title"].as_str().unwrap())
        .collect();
    for wanted in [
        "Share of requests per peer",
        "5xx rate per peer",
        "Health per peer",
        "Weight per peer",
        "Generation changes",
    ] {
        assert!(titles.contains(&wanted), "no panel {wanted:?}: {titles:?}");
    }

    // Traffic of every kind the dashboard shows: a healthy peer, one answering 500, a check.
    let good = Backend::start("good");
    let failing = Backend::start("failing");
    failing.set_status(500);
    let (port, metrics_port) = (free_port(), free_port());
    let nginx = Nginx::start(NginxOptions::new(format!(
        "upstream app {{ server {good}; server {failing}; shift; shift_check interval=1s; }}\n\
         server {{ listen 127.0.0.1:{port}; location / {{ proxy_pass http://app; }} }}\n\
         server {{ listen 127.0.0.1:{metrics_port}; location /shift/ {{ shift_api readers=any; }} }}\n",
        good = good.addr(),
        failing = failing.addr(),
    )));
    let mut client = HttpClient::new(port);
    for _ in 0..20 {
        client.get("/").expect("request through nginx");
    }
    let scrape = HttpClient::new(metrics_port)
        .get("/shift/metrics")
        .expect("scrape");
    assert_eq!(scrape.status, 200, "{}", scrape.body);
    let exported = exported(&scrape.body);
    drop(nginx);

    let queries = queries(&dashboard);
    assert!(queries.len() >= titles.len(), "{queries:?}");
    let wrong: Vec<String> = queries
        .iter()
        .flat_map(|query| mismatches(query, &exported))
        .collect();
    assert!(
        wrong.is_empty(),
        "{wrong:#?}\nexported: {:#?}",
        exported.keys()
    );
}

/// The check above fails on the mistakes it is there for.
#[test]
fn a_query_of_a_missing_metric_or_label_value_is_caught() {
    let exported = exported(
        "# TYPE nginx_shift_peer_responses_total counter\n\
         nginx_shift_peer_responses_total{upstream=\"app\",peer=\"a\",class=\"2xx\"} 1\n",
    );
    let ok = r#"sum by (peer) (rate(nginx_shift_peer_responses_total{class="2xx"}[1m]))"#;
    assert!(mismatches(ok, &exported).is_empty());
    for bad in [
        r#"rate(nginx_shift_peer_response_total[1m])"#,
        r#"rate(nginx_shift_peer_responses_total{class="5XX"}[1m])"#,
        r#"rate(nginx_shift_peer_responses_total{status="500"}[1m])"#,
        r#"sum by (server) (nginx_shift_peer_responses_total)"#,
        r#"sum by (peer) (nginx_shift_peer_responses_total"#,
    ] {
        assert!(!mismatches(bad, &exported).is_empty(), "{bad} passed");
    }
}
