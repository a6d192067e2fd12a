//! Merging the reports of subscribers that split one stream between them (members of a
//! shared subscription, `mqtt-subscriber --share`): no member can judge completeness on
//! its own, but the union of the sets each received can. The union is fed to the same
//! [`Verifier`] that verifies a single subscriber, so both verdicts mean the same thing.

use crate::report::{MemberSummary, MergeReport, VerifyReport, SCHEMA_VERSION};
use crate::verify::{decode_set, SetError, Verifier};

/// Why reports could not be merged. Each message names the report at fault.
#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    #[error("nothing to merge: no reports given")]
    Empty,
    #[error("{name} is a {kind:?} report, not a subscriber's")]
    NotSubscriber { name: String, kind: String },
    #[error("{name} has schema version {found}; this merge reads version {SCHEMA_VERSION}")]
    Schema { name: String, found: u32 },
    #[error(
        "{name} carries no received sets, so its readings cannot be told apart from the \
         other members': run every member with --report-sets"
    )]
    NoSets { name: String },
    #[error("{name}: the set of stream {stream} is unreadable: {source}")]
    BadSet {
        name: String,
        stream: String,
        source: SetError,
    },
    #[error("{name}: stream id {stream:?} is not 16 hex digits")]
    BadStreamId { name: String, stream: String },
    #[error("{name}: stream {stream} claims {claimed} distinct readings but its set holds {held}")]
    Inconsistent {
        name: String,
        stream: String,
        claimed: u64,
        held: u64,
    },
    #[error("{first} and {other} subscribed to different topics ({first_topic:?} and {other_topic:?}); only members of one subscription can be merged")]
    DifferentTopics {
        first: String,
        other: String,
        first_topic: String,
        other_topic: String,
    },
    #[error("{first} and {other} are from different share groups ({first_group} and {other_group}); only members of one group can be merged")]
    DifferentGroups {
        first: String,
        other: String,
        first_group: String,
        other_group: String,
    },
    #[error("{first} and {other} are both from client {client_id:?}: the same report twice?")]
    SameClient {
        first: String,
        other: String,
        client_id: String,
    },
    #[error("the reports expect different totals ({first}: {first_count}, {other}: {other_count}); say how many readings were expected over all members with --count")]
    CountMismatch {
        first: String,
        other: String,
        first_count: u64,
        other_count: u64,
    },
}

/// One report to merge and the name it goes by in messages (its file name).
#[derive(Debug, Clone)]
pub struct Member {
    pub name: String,
    pub report: VerifyReport,
}

/// Merges the members' reports into one verdict. `count` is the number of readings
/// expected over all members; without it, the members' own `expected` (which must
/// agree). Readings that more than one member received count as duplicates, corrupt and
/// foreign messages add up, and what no member received is missing.
pub fn merge(members: &[Member], count: Option<u64>) -> Result<MergeReport, MergeError> {
    let first = members.first().ok_or(MergeError::Empty)?;
    for (i, m) in members.iter().enumerate() {
        check_member(m)?;
        let r = &m.report;
        if r.topic != first.report.topic {
            return Err(MergeError::DifferentTopics {
                first: first.name.clone(),
                other: m.name.clone(),
                first_topic: first.report.topic.clone(),
                other_topic: r.topic.clone(),
            });
        }
        if r.share_group != first.report.share_group {
            let group = |g: &Option<String>| g.clone().unwrap_or_else(|| "none".into());
            return Err(MergeError::DifferentGroups {
                first: first.name.clone(),
                other: m.name.clone(),
                first_group: group(&first.report.share_group),
                other_group: group(&r.share_group),
            });
        }
        if let Some(twin) = members[..i]
            .iter()
            .find(|o| o.report.client_id == r.client_id)
        {
            return Err(MergeError::SameClient {
                first: twin.name.clone(),
                other: m.name.clone(),
                client_id: r.client_id.clone(),
            });
        }
    }
    let expected = match count {
        Some(n) => n,
        None => {
            let first_count = first.report.verdict.expected;
            if let Some(other) = members
                .iter()
                .find(|m| m.report.verdict.expected != first_count)
            {
                return Err(MergeError::CountMismatch {
                    first: first.name.clone(),
                    other: other.name.clone(),
                    first_count,
                    other_count: other.report.verdict.expected,
                });
            }
            first_count
        }
    };

    let mut verifier = Verifier::new(expected);
    for m in members {
        absorb(&mut verifier, m)?;
    }
    Ok(MergeReport {
        schema_version: SCHEMA_VERSION,
        kind: "merge".into(),
        topic: first.report.topic.clone(),
        share_group: first.report.share_group.clone(),
        members: members.iter().map(summary).collect(),
        verdict: verifier.verdict(),
        last_decode_error: members
            .iter()
            .find_map(|m| m.report.last_decode_error.clone()),
    })
}

fn check_member(m: &Member) -> Result<(), MergeError> {
    let r = &m.report;
    if r.kind != "subscriber" {
        return Err(MergeError::NotSubscriber {
            name: m.name.clone(),
            kind: r.kind.clone(),
        });
    }
    if r.schema_version != SCHEMA_VERSION {
        return Err(MergeError::Schema {
            name: m.name.clone(),
            found: r.schema_version,
        });
    }
    if r.verdict.streams.iter().any(|s| s.set.is_none()) {
        return Err(MergeError::NoSets {
            name: m.name.clone(),
        });
    }
    Ok(())
}

/// Adds one member's arrivals to the union.
fn absorb(verifier: &mut Verifier, m: &Member) -> Result<(), MergeError> {
    let v = &m.report.verdict;
    verifier.absorb_counts(v.received, v.corrupt, v.foreign);
    for s in &v.streams {
        let stream_id = u64::from_str_radix(&s.id, 16)
            .ok()
            .filter(|_| s.id.len() == 16)
            .ok_or_else(|| MergeError::BadStreamId {
                name: m.name.clone(),
                stream: s.id.clone(),
            })?;
        let text = s.set.as_deref().unwrap_or_default();
        let seen = decode_set(text).map_err(|source| MergeError::BadSet {
            name: m.name.clone(),
            stream: s.id.clone(),
            source,
        })?;
        if seen.len() != s.distinct {
            return Err(MergeError::Inconsistent {
                name: m.name.clone(),
                stream: s.id.clone(),
                claimed: s.distinct,
                held: seen.len(),
            });
        }
        verifier.absorb_stream(
            stream_id,
            &s.device_id,
            s.total,
            &seen,
            s.duplicates,
            s.out_of_order,
        );
    }
    Ok(())
}

fn summary(m: &Member) -> MemberSummary {
    let r = &m.report;
    MemberSummary {
        report: m.name.clone(),
        client_id: r.client_id.clone(),
        received: r.verdict.received,
        distinct: r.verdict.distinct,
        duplicates: r.verdict.duplicates,
        corrupt: r.verdict.corrupt,
        elapsed_s: r.elapsed_s,
        msgs_per_s: r.msgs_per_s,
        reconnects: r.reconnects,
        interrupted: r.interrupted,
        idle_timeout: r.idle_timeout,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::timing::Latencies;

    use crate::reading::tests::binary as payload;

    /// A member's report after receiving `payloads`, with sets.
    fn member(name: &str, expected: u64, payloads: &[Vec<u8>]) -> Member {
        let mut v = Verifier::new(expected);
        for p in payloads {
            v.record_payload(p);
        }
        Member {
            name: name.into(),
            report: VerifyReport {
                schema_version: SCHEMA_VERSION,
                kind: "subscriber".into(),
                client_id: format!("client-{name}"),
                topic: "sensors/#".into(),
                qos: 1,
                verdict: v.verdict_with_sets(),
                latency: Latencies::default(),
                per_second: vec![],
                elapsed_s: 1.0,
                msgs_per_s: 0.0,
                interrupted: false,
                idle_timeout: true,
                last_decode_error: v.last_error().map(ToString::to_string),
                reconnects: 0,
                resumed: 0,
                peak_rss_kib: None,
                share_group: Some("g".into()),
            },
        }
    }

    /// Readings `seqs` of streams 1 and 2, each of total 10.
    fn readings(seqs: impl IntoIterator<Item = u64> + Clone) -> Vec<Vec<u8>> {
        [1, 2]
            .into_iter()
            .flat_map(|stream| {
                seqs.clone()
                    .into_iter()
                    .map(move |s| payload(stream, s, 10))
            })
            .collect()
    }

    #[test]
    fn two_halves_make_a_complete_whole() {
        let odd = member("a.json", 20, &readings((1..=10).filter(|s| s % 2 == 1)));
        let even = member("b.json", 20, &readings((1..=10).filter(|s| s % 2 == 0)));
        assert!(!odd.report.verdict.complete);
        let merged = merge(&[odd, even], None).unwrap();
        let v = &merged.verdict;
        assert!(v.complete, "{merged}");
        assert_eq!(
            (v.received, v.distinct, v.duplicates, v.missing),
            (20, 20, 0, 0)
        );
        assert_eq!(v.streams.len(), 2);
        assert!(v
            .streams
            .iter()
            .all(|s| s.distinct == 10 && s.set.is_none()));
        assert_eq!(merged.members.len(), 2);
        assert_eq!(merged.members[0].distinct, 10);
        assert_eq!(merged.share_group.as_deref(), Some("g"));
    }

    #[test]
    fn readings_more_than_one_member_received_are_duplicates() {
        let a = member("a", 20, &readings(1..=6));
        let mut b_payloads = readings(5..=10);
        b_payloads.push(payload(1, 10, 10)); // a duplicate within b as well
        let b = member("b", 20, &b_payloads);
        let v = merge(&[a, b], None).unwrap().verdict;
        // 5 and 6 of both streams arrived at both members; 10 of stream 1 twice at b.
        assert_eq!((v.distinct, v.duplicates, v.received), (20, 5, 25));
        assert_eq!(
            v.received,
            v.distinct + v.duplicates + v.corrupt + v.foreign
        );
        assert!(v.complete);
    }

    #[test]
    fn what_no_member_received_is_missing_worst_stream_first() {
        let a = member("a", 20, &readings([1, 2, 3]));
        let mut rest: Vec<_> = (4..=10)
            .filter(|s| *s != 7)
            .map(|s| payload(1, s, 10))
            .collect();
        rest.extend((4..=10).filter(|s| *s < 8).map(|s| payload(2, s, 10)));
        let b = member("b", 20, &rest);
        let v = merge(&[a, b], None).unwrap().verdict;
        assert_eq!(v.missing, 4);
        assert!(!v.complete);
        assert_eq!(v.streams[0].id, format!("{:016x}", 2));
        assert_eq!(v.streams[0].missing_ranges, vec![[8, 10]]);
        assert_eq!(v.streams[1].missing_ranges, vec![[7, 7]]);
    }

    #[test]
    fn a_stream_no_member_saw_counts_as_missing_against_the_count() {
        let a = member("a", 30, &readings(1..=5));
        let b = member("b", 30, &readings(6..=10));
        let v = merge(&[a, b], None).unwrap().verdict;
        assert_eq!((v.distinct, v.missing), (20, 10));
    }

    #[test]
    fn corruption_at_any_member_is_carried_over() {
        let a = member("a", 20, &readings(1..=5));
        let mut bad = payload(2, 3, 10);
        bad[13] ^= 0xff;
        let mut payloads = readings(6..=10);
        payloads.push(bad);
        payloads.push(b"not a reading".to_vec());
        let b = member("b", 20, &payloads);
        let merged = merge(&[a, b], None).unwrap();
        let v = &merged.verdict;
        assert_eq!((v.corrupt, v.foreign, v.distinct), (1, 1, 20));
        assert!(!v.complete, "corruption spoils the merged verdict");
        assert!(merged.last_decode_error.is_some());
        assert!(merged.to_string().contains("Verdict: CORRUPT"), "{merged}");
    }

    #[test]
    fn members_that_disagree_on_the_count_need_an_explicit_one() {
        let a = member("a", 20, &readings(1..=5));
        let b = member("b", 1_000_000, &readings(6..=10));
        let err = merge(&[a.clone(), b.clone()], None).unwrap_err();
        assert!(matches!(err, MergeError::CountMismatch { .. }), "{err}");
        assert!(err.to_string().contains("--count"), "{err}");
        let v = merge(&[a, b], Some(20)).unwrap().verdict;
        assert_eq!((v.expected, v.missing), (20, 0));
    }

    #[test]
    fn reports_that_cannot_be_merged_say_why() {
        let a = member("a", 20, &readings(1..=5));
        let mut other_topic = member("b", 20, &readings(6..=10));
        other_topic.report.topic = "other/#".into();
        let err = merge(&[a.clone(), other_topic], None).unwrap_err();
        assert!(matches!(err, MergeError::DifferentTopics { .. }), "{err}");

        let mut no_sets = member("b", 20, &readings(6..=10));
        no_sets.report.verdict.streams[0].set = None;
        let err = merge(&[a.clone(), no_sets], None).unwrap_err();
        assert!(err.to_string().contains("--report-sets"), "{err}");

        let mut other_group = member("b", 20, &readings(6..=10));
        other_group.report.share_group = Some("h".into());
        let err = merge(&[a.clone(), other_group], None).unwrap_err();
        assert!(matches!(err, MergeError::DifferentGroups { .. }), "{err}");

        let err = merge(&[a.clone(), a.clone()], None).unwrap_err();
        assert!(matches!(err, MergeError::SameClient { .. }), "{err}");

        let mut garbled = member("b", 20, &readings(6..=10));
        garbled.report.verdict.streams[0].set = Some("not base64!".into());
        let err = merge(&[a.clone(), garbled], None).unwrap_err();
        assert!(matches!(err, MergeError::BadSet { .. }), "{err}");

        let mut lying = member("b", 20, &readings(6..=10));
        lying.report.verdict.streams[0].distinct += 1;
        let err = merge(&[a.clone(), lying], None).unwrap_err();
        assert!(matches!(err, MergeError::Inconsistent { .. }), "{err}");

        let mut publisher = member("b", 20, &readings(6..=10));
        publisher.report.kind = "publisher".into();
        let err = merge(&[a, publisher], None).unwrap_err();
        assert!(matches!(err, MergeError::NotSubscriber { .. }), "{err}");

        assert!(matches!(merge(&[], None), Err(MergeError::Empty)));
    }

    #[test]
    fn a_member_that_saw_nothing_adds_nothing() {
        let a = member("a", 20, &readings(1..=10));
        let idle = member("b", 20, &[]);
        let merged = merge(&[a, idle], None).unwrap();
        assert!(merged.verdict.complete);
        assert_eq!(merged.members[1].received, 0);
    }

    #[test]
    fn merging_equals_verifying_every_arrival_in_one_place() {
        // Spread arrivals, duplicates and gaps over three members; one verifier that saw
        // all of them must agree with the merge (except `out_of_order`, which only each
        // member can judge, in its own arrival order).
        let all: Vec<(u64, u64)> = (1..=40u64)
            .flat_map(|s| [(1, s), (2, s), (3, s)])
            .filter(|(stream, s)| (s * stream) % 7 != 0)
            .chain([(1, 3), (2, 5), (2, 5)])
            .collect();
        let mut parts: [Vec<Vec<u8>>; 3] = Default::default();
        let mut whole = Verifier::new(120);
        for (i, (stream, seq)) in all.iter().enumerate() {
            let p = payload(*stream, *seq, 40);
            whole.record_payload(&p);
            parts[i % 3].push(p);
        }
        let members: Vec<Member> = parts
            .iter()
            .enumerate()
            .map(|(i, p)| member(&format!("m{i}"), 120, p))
            .collect();
        let mut merged = merge(&members, None).unwrap().verdict;
        let mut expected = whole.verdict();
        for s in merged.streams.iter_mut().chain(expected.streams.iter_mut()) {
            s.out_of_order = 0;
        }
        merged.out_of_order = 0;
        expected.out_of_order = 0;
        assert_eq!(merged, expected);
    }

    #[test]
    fn sets_survive_their_text_form() {
        let mut set = roaring::RoaringTreemap::new();
        set.insert_range(1..=1000);
        set.insert(u64::from(u32::MAX) + 7);
        let text = crate::verify::encode_set(&set);
        assert_eq!(decode_set(&text).unwrap(), set);
        assert!(decode_set("AAAA").is_err());
    }
}
