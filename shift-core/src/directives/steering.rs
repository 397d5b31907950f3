//! The directives that steer requests, in an upstream:
//! - `shift_sticky KEY;` and `shift_pin VALUE;` each take one Nginx complex value (compiled by
//!   the FFI module; here only its presence is checked);
//! - `shift_label SERVER LABEL;`: the label the peers of one `server` line (or of one resolved
//!   name) carry, e.g. the version they run. SERVER is written as on its line: `127.0.0.1:8001`,
//!   `backend:8000`, `unix:/run/app.sock`, or an address such a line resolved to. Several lines
//!   may share a label (the replicas of one version).

use super::DirectiveError;
use crate::table::Label;

const SHIFT_LABEL: &str = "shift_label";

/// Checks the arguments that follow `shift_sticky`: one non-empty value.
pub fn parse_shift_sticky(args: &[&str]) -> Result<(), DirectiveError> {
    one_value("shift_sticky", args)
}

/// Checks the arguments that follow `shift_pin`: one non-empty value.
pub fn parse_shift_pin(args: &[&str]) -> Result<(), DirectiveError> {
    one_value("shift_pin", args)
}

fn one_value(directive: &'static str, args: &[&str]) -> Result<(), DirectiveError> {
    match args {
        [value] if !value.is_empty() => Ok(()),
        _ => Err(DirectiveError::InvalidParameter {
            directive,
            param: args.join(" "),
            expected: "one value, e.g. \"$cookie_session\"",
        }),
    }
}

/// One `shift_label` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelLine {
    pub server: String,
    pub label: Label,
}

/// Parses the arguments that follow `shift_label`.
pub fn parse_shift_label(args: &[&str]) -> Result<LabelLine, DirectiveError> {
    let &[server, label] = args else {
        return Err(DirectiveError::Conflict {
            directive: SHIFT_LABEL,
            detail: "it takes a server and a label, e.g. \"shift_label 10.0.0.7:8000 green;\""
                .into(),
        });
    };
    let invalid = DirectiveError::InvalidParameter {
        directive: SHIFT_LABEL,
        param: label.to_string(),
        expected: "a label of 1 to 63 letters, digits, \".\", \"_\", \"+\" or \"-\"",
    };
    let label = Label::parse(label).map_err(|_| invalid.clone())?;
    if label.is_none() || server.is_empty() {
        return Err(invalid);
    }
    Ok(LabelLine {
        server: server.to_string(),
        label,
    })
}

/// The label for a peer of the `server` line written `line` (or the name `line` resolves),
/// whose address is `address`: a `shift_label` for its line wins over one for its address.
pub fn label_for(lines: &[LabelLine], line: &str, address: &str) -> Label {
    let find = |server: &str| lines.iter().find(|label| label.server == server);
    find(line)
        .or_else(|| find(address))
        .map_or(Label::NONE, |label| label.label)
}

/// The first `shift_label` line whose SERVER is none of the upstream's: not a `server` line
/// as written, not an address one resolved to, not a resolved `NAME:PORT`.
pub fn unknown_label_server<'a>(
    lines: &'a [LabelLine],
    servers: &[(String, Vec<String>)],
    names: &[String],
) -> Option<&'a LabelLine> {
    lines.iter().find(|line| {
        let server = line.server.as_str();
        !servers
            .iter()
            .any(|(text, addresses)| text == server || addresses.iter().any(|a| a == server))
            && !names.iter().any(|name| name == server)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sticky_and_pin_take_one_value() {
        assert_eq!(parse_shift_sticky(&["$cookie_session"]), Ok(()));
        assert_eq!(parse_shift_pin(&["$http_x_shift_to"]), Ok(()));
        let err = parse_shift_pin(&[""]).unwrap_err().to_string();
        assert!(err.contains("\"shift_pin\" directive"), "{err}");
    }

    #[test]
    fn a_server_and_its_label() {
        let line = parse_shift_label(&["127.0.0.1:8001", "green"]).unwrap();
        assert_eq!(
            (line.server.as_str(), line.label.as_str()),
            ("127.0.0.1:8001", "green")
        );
        for (args, says) in [
            (vec!["127.0.0.1:8001"], "takes a server and a label"),
            (vec!["a:1", "b", "c"], "takes a server and a label"),
            (vec!["a:1", "two words"], "invalid parameter \"two words\""),
            (vec!["a:1", ""], "invalid parameter \"\""),
            (vec!["a:1", "10.0.0.1:80"], "a label of 1 to 63"),
        ] {
            let err = parse_shift_label(&args).unwrap_err().to_string();
            assert!(
                err.contains(says) && err.contains("shift_label"),
                "{args:?}: {err}"
            );
        }
    }

    #[test]
    fn a_line_label_wins_over_an_address_label() {
        let lines = [
            parse_shift_label(&["localhost:8001", "green"]).unwrap(),
            parse_shift_label(&["127.0.0.1:8001", "canary"]).unwrap(),
        ];
        assert_eq!(
            label_for(&lines, "localhost:8001", "127.0.0.1:8001").as_str(),
            "green"
        );
        assert_eq!(
            label_for(&lines, "127.0.0.1:8001", "127.0.0.1:8001").as_str(),
            "canary"
        );
        assert!(label_for(&lines, "other:1", "10.0.0.1:1").is_none());
    }

    #[test]
    fn a_label_must_name_a_server_of_the_upstream() {
        let servers = [(
            "localhost:8001".to_string(),
            vec!["127.0.0.1:8001".to_string()],
        )];
        let names = ["backend:8000".to_string()];
        for known in ["localhost:8001", "127.0.0.1:8001", "backend:8000"] {
            let lines = [parse_shift_label(&[known, "green"]).unwrap()];
            assert_eq!(unknown_label_server(&lines, &servers, &names), None);
        }
        let lines = [parse_shift_label(&["127.0.0.1:9999", "green"]).unwrap()];
        assert_eq!(
            unknown_label_server(&lines, &servers, &names),
            Some(&lines[0])
        );
    }
}
