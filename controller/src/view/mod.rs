//! What the terminal shows: the status table (`table.rs`), the live progress line of long
//! commands (`progress.rs`) and the bars and sparklines of `status --watch` (`watch.rs`). Pure
//! rendering: the commands decide what to print (`commands/output.rs`).

pub mod progress;
pub mod table;
pub mod watch;
