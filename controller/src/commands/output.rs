//! What commands print: upstreams as status tables (`view::table`), or JSON per Nginx, each
//! named by where it comes from (a socket, a host, the desired state in etcd).

use shift_wire::Upstream;

use super::Ctx;
use crate::fleet::Fleet;
use crate::view::table::render_table;

impl Ctx {
    /// Prints one value per Nginx as a JSON array of `{"socket": ..., key: value}` (with
    /// --etcd, `"host"` or `"source"` instead of `"socket"`).
    pub(crate) fn print_json_by_source<T: serde::Serialize>(
        &self,
        key: &str,
        sources: &[String],
        values: &[T],
    ) {
        let name = match self.fleet {
            Fleet::Sockets(_) => "socket",
            Fleet::Etcd(_) => "source",
        };
        let entries: Vec<_> = sources
            .iter()
            .zip(values)
            .map(|(source, value)| serde_json::json!({ name: source, key: value }))
            .collect();
        let json = serde_json::to_string_pretty(&entries).expect("JSON of wire types");
        println!("{json}");
    }

    /// Prints upstreams a command read or changed, named by where they come from.
    pub(crate) fn print_upstreams(&self, upstreams: &[Upstream]) {
        let sources = self.fleet.sources(upstreams.len());
        if self.json {
            self.print_json_by_source("upstream", &sources, upstreams);
            return;
        }
        for (source, upstream) in sources.iter().zip(upstreams) {
            if upstreams.len() > 1 || matches!(self.fleet, Fleet::Etcd(_)) {
                println!("# {source}");
            }
            print!("{}", render_table(upstream));
        }
    }
}
