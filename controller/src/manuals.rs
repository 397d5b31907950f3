//! Man pages and shell completions, generated from the clap definitions in `cli.rs` so that
//! they never disagree with `--help`. The packages run `shiftctl man-pages DIR` and
//! `shiftctl completions SHELL` at build time; users without a package can run them too.

use std::fs;
use std::io::Write;
use std::path::Path;

use anyhow::Context;
use clap::CommandFactory;
use clap_complete::Shell;
use clap_mangen::Man;
use roff::{bold, roman, Roff};

use crate::cli::Cli;
use crate::exit::Failure;

/// Writes the completion script for `shell` to standard output.
pub fn print_completions(shell: Shell) -> Result<(), Failure> {
    let mut command = Cli::command();
    clap_complete::generate(shell, &mut command, "shiftctl", &mut std::io::stdout());
    Ok(())
}

/// Writes `shiftctl.1` and a page per visible command (`shiftctl-canary.1`, …) into `dir`.
pub fn write_man_pages(dir: &Path) -> Result<(), Failure> {
    write_pages(dir)
        .with_context(|| format!("cannot write the man pages into {}", dir.display()))
        .map_err(Failure::usage)
}

fn write_pages(dir: &Path) -> anyhow::Result<()> {
    fs::create_dir_all(dir)?;
    let mut command = Cli::command().disable_help_subcommand(true);
    command.build();
    // Once built, a command's display name is "shiftctl-canary": its page is shiftctl-canary(1).
    for sub in command.get_subcommands().filter(|sub| !sub.is_hide_set()) {
        let man = Man::new(sub.clone());
        let mut page = Vec::new();
        man.render(&mut page)?;
        see_also(&mut page)?;
        fs::write(dir.join(man.get_filename()), page)?;
    }
    fs::write(dir.join("shiftctl.1"), main_page(command)?)?;
    Ok(())
}

/// The top page: what `--help` says, plus what a man page is read for and `--help` leaves out.
fn main_page(command: clap::Command) -> anyhow::Result<Vec<u8>> {
    let man = Man::new(command);
    let mut page = Vec::new();
    man.render_title(&mut page)?;
    man.render_name_section(&mut page)?;
    man.render_synopsis_section(&mut page)?;
    man.render_description_section(&mut page)?;
    man.render_options_section(&mut page)?;
    man.render_subcommands_section(&mut page)?;
    let mut extra = Roff::new();
    extra.control("SH", ["EXIT STATUS"]);
    for (code, meaning) in [
        ("0", "Done."),
        (
            "1",
            "Aborted, or rolled back (a canary or rolling step failed its gates).",
        ),
        (
            "2",
            "Usage or configuration error: a bad argument, plan or state directory.",
        ),
        (
            "3",
            "Cannot reach Nginx: no socket, or the admin API did not answer.",
        ),
    ] {
        extra
            .control("TP", [])
            .text([bold(code)])
            .text([roman(meaning)]);
    }
    extra.control("SH", ["FILES"]);
    for (path, meaning) in [
        (
            "/run/nginx-shift/shift.sock",
            "The default admin socket: where shift_api listens in the documented configuration.",
        ),
        (
            "/var/lib/nginx-shift",
            "The default state directory: the stable set a rollback returns to, and the live side of deploys.",
        ),
    ] {
        extra.control("TP", []).text([bold(path)]).text([roman(meaning)]);
    }
    extra.to_writer(&mut page)?;
    see_also(&mut page)?;
    man.render_version_section(&mut page)?;
    Ok(page)
}

fn see_also(page: &mut Vec<u8>) -> std::io::Result<()> {
    let mut roff = Roff::new();
    roff.control("SH", ["SEE ALSO"]).text([
        bold("nginx"),
        roman("(8); the directives and the admin API in "),
        bold("/usr/share/doc/shiftctl/"),
        roman(" and docs/ in the nginx-shift sources."),
    ]);
    roff.to_writer(page)?;
    page.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every visible command gets a page whose synopsis is the command as typed.
    #[test]
    fn a_page_per_command() {
        let dir = tempfile::tempdir().unwrap();
        write_pages(dir.path()).unwrap();
        let canary = fs::read_to_string(dir.path().join("shiftctl-canary.1")).unwrap();
        assert!(canary.contains(r"shiftctl canary"), "{canary}");
        assert!(canary.contains("max\\-latency\\-increase"), "{canary}");
        let main = fs::read_to_string(dir.path().join("shiftctl.1")).unwrap();
        assert!(main.contains("EXIT STATUS"), "{main}");
        assert!(main.contains("/run/nginx\\-shift/shift.sock"), "{main}");
        assert!(!dir.path().join("shiftctl-man-pages.1").exists());
        assert!(dir.path().join("shiftctl-completions.1").exists());
    }
}
