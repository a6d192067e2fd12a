//! Access control from an ACL file in Mosquitto's `acl_file` syntax, so that users can bring
//! theirs:
//!
//! ```text
//! # rules before any `user` line apply to anonymous clients
//! topic read sensors/#
//! user alice
//! topic readwrite alerts/#
//! topic deny alerts/secret
//! # patterns apply to every client: %u is its user name, %c its client id
//! pattern write sensors/data/%c
//! ```
//!
//! Access is `read`, `write`, `readwrite` (the default when omitted) or `deny`. Once a file
//! is given, what no rule allows is denied, and `deny` wins over any allow. A pattern whose
//! `%u` or `%c` would bring a wildcard in (`+`, `#`) does not apply, nor a `%u` pattern to a
//! client without a user name.
//!
//! Reading is checked per message, not per subscription: a subscription is granted when some
//! topic it matches is readable and not every one is denied, and each message the router
//! then forwards is checked against the reader's rules (see `connection::writer`). So `#`
//! stays subscribable beside a `deny` rule, and a subscriber of `#` never sees what it may
//! not read.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use rumqttd::protocol::matches;

/// What a rule grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    Read,
    Write,
    ReadWrite,
    Deny,
}

/// One `topic` or `pattern` line.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    access: Access,
    filter: String,
    /// A `pattern` line: `%u` and `%c` are substituted per client.
    pattern: bool,
}

/// Why an ACL file cannot be used: one line naming the file and the line.
#[derive(Debug, thiserror::Error)]
pub enum AclError {
    #[error("cannot read ACL file {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("ACL file {path}, line {line}: {problem}")]
    Invalid {
        path: PathBuf,
        line: usize,
        problem: String,
    },
}

/// The rules of an ACL file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Acl {
    /// Rules before any `user` line: anonymous clients'.
    anonymous: Vec<Rule>,
    users: HashMap<String, Vec<Rule>>,
    /// `pattern` lines, wherever they stand: every client's.
    patterns: Vec<Rule>,
}

impl Acl {
    /// Reads and checks an ACL file.
    pub fn load(path: &Path) -> Result<Acl, AclError> {
        let text = std::fs::read_to_string(path).map_err(|error| AclError::Read {
            path: path.to_path_buf(),
            error,
        })?;
        Acl::parse(&text).map_err(|(line, problem)| AclError::Invalid {
            path: path.to_path_buf(),
            line,
            problem,
        })
    }

    /// Parses ACL text; an error names the (1-based) line.
    fn parse(text: &str) -> Result<Acl, (usize, String)> {
        let mut acl = Acl::default();
        let mut user: Option<String> = None;
        for (index, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let fail = |problem: String| (index + 1, problem);
            let (keyword, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
            let rest = rest.trim();
            match keyword {
                "user" => {
                    if rest.is_empty() {
                        return Err(fail("`user` needs a user name".into()));
                    }
                    acl.users.entry(rest.to_owned()).or_default();
                    user = Some(rest.to_owned());
                }
                "topic" | "pattern" => {
                    let rule = rule(rest, keyword == "pattern").map_err(fail)?;
                    match (keyword, &user) {
                        ("pattern", _) => acl.patterns.push(rule),
                        (_, Some(user)) => acl.users.entry(user.clone()).or_default().push(rule),
                        (_, None) => acl.anonymous.push(rule),
                    }
                }
                other => {
                    return Err(fail(format!(
                        "unknown keyword {other:?} (expected `user`, `topic` or `pattern`)"
                    )))
                }
            }
        }
        Ok(acl)
    }

    /// Rules in the file (every `topic` and `pattern` line).
    pub fn rules(&self) -> usize {
        self.anonymous.len()
            + self.patterns.len()
            + self.users.values().map(Vec::len).sum::<usize>()
    }

    /// The rules that apply to one client, patterns resolved.
    pub(crate) fn for_client(&self, username: Option<&str>, client_id: &str) -> ClientAcl {
        let own = match username {
            Some(user) => self.users.get(user).map_or(&[][..], Vec::as_slice),
            None => &self.anonymous[..],
        };
        let mut resolved = ClientAcl::default();
        for rule in own {
            resolved.add(rule.access, rule.filter.clone());
        }
        for rule in &self.patterns {
            if let Some(filter) = substitute(&rule.filter, username, client_id) {
                resolved.add(rule.access, filter);
            }
        }
        resolved
    }
}

/// `[read|write|readwrite|deny] FILTER` (access optional: readwrite).
fn rule(rest: &str, pattern: bool) -> Result<Rule, String> {
    let (first, tail) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
    let (access, filter) = match first {
        "read" => (Access::Read, tail.trim()),
        "write" => (Access::Write, tail.trim()),
        "readwrite" => (Access::ReadWrite, tail.trim()),
        "deny" => (Access::Deny, tail.trim()),
        _ => (Access::ReadWrite, rest),
    };
    if filter.is_empty() {
        return Err("a rule needs a topic filter".into());
    }
    valid_filter(filter)?;
    Ok(Rule {
        access,
        filter: filter.to_owned(),
        pattern,
    })
}

fn valid_filter(filter: &str) -> Result<(), String> {
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        if level.contains('#') && (level != "#" || levels.peek().is_some()) {
            return Err(format!("{filter:?}: '#' must be a whole last level"));
        }
        if level.contains('+') && level != "+" {
            return Err(format!("{filter:?}: '+' must be a whole level"));
        }
    }
    Ok(())
}

/// A pattern's filter for one client, or `None` if it does not apply to it.
fn substitute(filter: &str, username: Option<&str>, client_id: &str) -> Option<String> {
    let mut out = filter.to_owned();
    if out.contains("%u") {
        let user = username?;
        if user.contains(['+', '#']) {
            return None;
        }
        out = out.replace("%u", user);
    }
    if out.contains("%c") {
        if client_id.contains(['+', '#']) {
            return None;
        }
        out = out.replace("%c", client_id);
    }
    Some(out)
}

/// One client's rules: what it may read and write, and what is denied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ClientAcl {
    read: Vec<String>,
    write: Vec<String>,
    deny: Vec<String>,
}

impl ClientAcl {
    fn add(&mut self, access: Access, filter: String) {
        match access {
            Access::Read => self.read.push(filter),
            Access::Write => self.write.push(filter),
            Access::ReadWrite => {
                self.read.push(filter.clone());
                self.write.push(filter);
            }
            Access::Deny => self.deny.push(filter),
        }
    }

    fn denied(&self, topic: &str) -> bool {
        self.deny.iter().any(|d| matches(topic, d))
    }

    /// May the client publish to `topic`?
    pub(crate) fn can_write(&self, topic: &str) -> bool {
        !self.denied(topic) && self.write.iter().any(|w| matches(topic, w))
    }

    /// May the client receive a message on `topic`?
    pub(crate) fn can_read(&self, topic: &str) -> bool {
        !self.denied(topic) && self.read.iter().any(|r| matches(topic, r))
    }

    /// May the client subscribe to `filter` (for `$share/GROUP/F`, to `F`)? Yes when some
    /// topic it matches is readable and not every one is denied; messages are checked one
    /// by one after that.
    pub(crate) fn can_subscribe(&self, filter: &str) -> bool {
        let filter = filter
            .strip_prefix("$share/")
            .and_then(|rest| rest.split_once('/'))
            .map_or(filter, |(_, inner)| inner);
        !self.deny.iter().any(|d| covers(d, filter))
            && self.read.iter().any(|r| intersects(r, filter))
    }
}

/// True if some topic matches both filters.
fn intersects(a: &str, b: &str) -> bool {
    let (mut a, mut b) = (a.split('/'), b.split('/'));
    loop {
        match (a.next(), b.next()) {
            (Some("#"), _) | (_, Some("#")) => return true,
            (None, None) => return true,
            (Some(x), Some(y)) if x == "+" || y == "+" || x == y => {}
            _ => return false,
        }
    }
}

/// True if every topic that matches `inner` matches `outer`.
fn covers(outer: &str, inner: &str) -> bool {
    let (mut o, mut i) = (outer.split('/'), inner.split('/'));
    loop {
        match (o.next(), i.next()) {
            (Some("#"), _) => return true,
            (_, Some("#")) => return false,
            (None, None) => return true,
            (Some("+"), Some(_)) => {}
            (Some(x), Some(y)) if x == y && y != "+" => {}
            _ => return false,
        }
    }
}

impl fmt::Display for Acl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} rules for {} users, {} anonymous, {} patterns",
            self.rules(),
            self.users.len(),
            self.anonymous.len(),
            self.patterns.len()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = "\
# anonymous clients may read the sensors
topic read sensors/#

user d1
topic readwrite devices/d1/#

user reader
topic read sensors/#
topic deny sensors/secret

pattern write sensors/data/%c
";

    #[test]
    fn anonymous_users_and_patterns_get_their_rules() {
        let acl = Acl::parse(EXAMPLE).unwrap();
        let anon = acl.for_client(None, "dev-7");
        assert!(anon.can_read("sensors/x"));
        assert!(!anon.can_write("sensors/x"));
        assert!(anon.can_write("sensors/data/dev-7"), "the %c pattern");
        assert!(!anon.can_write("sensors/data/dev-8"));

        let d1 = acl.for_client(Some("d1"), "d1");
        assert!(d1.can_write("devices/d1/x") && d1.can_read("devices/d1/x"));
        assert!(d1.can_write("sensors/data/d1"));
        assert!(
            !d1.can_read("sensors/x"),
            "user rules replace the anonymous ones"
        );
        assert!(
            d1.can_subscribe("#"),
            "some of it is readable: checked per message"
        );
        assert!(!d1.can_subscribe("sensors/#"));

        let reader = acl.for_client(Some("reader"), "r");
        assert!(reader.can_read("sensors/a") && !reader.can_read("sensors/secret"));
        assert!(
            reader.can_subscribe("sensors/#"),
            "partly denied: checked per message"
        );
        assert!(!reader.can_subscribe("sensors/secret"), "wholly denied");
        assert!(!reader.can_subscribe("other/#"));
        let unknown = acl.for_client(Some("mallory"), "m");
        assert!(!unknown.can_read("sensors/a"));
    }

    #[test]
    fn deny_wins_and_wildcards_in_ids_never_reach_a_pattern() {
        let acl =
            Acl::parse("topic readwrite #\ntopic deny test/nosubscribe\npattern write x/%c\n")
                .unwrap();
        let c = acl.for_client(None, "a");
        assert!(c.can_subscribe("#") && c.can_subscribe("+/+"));
        assert!(!c.can_subscribe("test/nosubscribe"));
        assert!(!c.can_read("test/nosubscribe") && !c.can_write("test/nosubscribe"));
        let sneaky = acl.for_client(None, "#");
        assert_eq!(
            sneaky.write.len(),
            1,
            "the pattern does not apply: {sneaky:?}"
        );
    }

    #[test]
    fn a_malformed_file_names_its_line() {
        for (text, line) in [
            ("topic read a/#\nbogus x\n", 2),
            ("\n\ntopic read a/#/b\n", 3),
            ("user\n", 1),
            ("topic read\n", 1),
            ("pattern deny a+\n", 1),
        ] {
            assert_eq!(Acl::parse(text).unwrap_err().0, line, "{text:?}");
        }
    }

    #[test]
    fn filters_intersect_and_cover_as_mqtt_matching_says() {
        assert!(intersects("#", "a/b") && intersects("a/+", "+/b") && intersects("a/#", "a"));
        assert!(!intersects("a/b", "a/c") && !intersects("a/+", "a"));
        assert!(covers("a/#", "a/b/c") && covers("a/+", "a/b") && covers("#", "+/+"));
        assert!(!covers("a/+", "a/#") && !covers("a/b", "a/+") && !covers("a/+", "a/b/c"));
    }
}
