//! Topic names and filters: defaults and the validity rules of MQTT 3.1.1 (section 4.7),
//! checked when the user gives them rather than when the broker drops the connection.

/// Where the publisher sends readings by default.
pub const DEFAULT_TOPIC: &str = "sensors/data";
/// What the subscriber listens to by default: every sensor topic.
pub const DEFAULT_FILTER: &str = "sensors/#";

/// Accepts a topic name a client may publish to: non-empty, no wildcards, no NUL.
pub fn parse_topic_name(s: &str) -> Result<String, String> {
    if s.is_empty() {
        return Err("a topic name must not be empty".into());
    }
    if s.contains(['+', '#']) {
        return Err("a topic name cannot contain the wildcards + or # (those are for --topic filters of the subscriber)".into());
    }
    if s.contains('\0') {
        return Err("a topic name cannot contain NUL".into());
    }
    if s.len() > 65_535 {
        return Err("a topic name is at most 65,535 bytes".into());
    }
    Ok(s.to_owned())
}

/// Accepts a topic filter: `+` only as a whole level, `#` only as the whole last level.
pub fn parse_topic_filter(s: &str) -> Result<String, String> {
    if s.is_empty() {
        return Err("a topic filter must not be empty".into());
    }
    if s.contains('\0') || s.len() > 65_535 {
        return Err("a topic filter must be at most 65,535 bytes, without NUL".into());
    }
    let levels: Vec<&str> = s.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        if level.contains('#') && (*level != "#" || i + 1 != levels.len()) {
            return Err(format!("{s:?}: # must be a whole level and the last one"));
        }
        if level.contains('+') && *level != "+" {
            return Err(format!("{s:?}: + must be a whole level"));
        }
    }
    Ok(s.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_filters_follow_the_spec() {
        assert!(parse_topic_name(DEFAULT_TOPIC).is_ok());
        for bad in ["", "a/+", "a/#", "a\0b"] {
            assert!(parse_topic_name(bad).is_err(), "{bad:?}");
        }
        for good in [DEFAULT_FILTER, "#", "+", "a/+/c", "sensors/data", "+/+/#"] {
            assert!(parse_topic_filter(good).is_ok(), "{good:?}");
        }
        for bad in ["", "a/#/c", "a#", "a/b+", "#/a"] {
            assert!(parse_topic_filter(bad).is_err(), "{bad:?}");
        }
    }
}
