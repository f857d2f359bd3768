//! Compatibility levels and the check a new schema must pass before it becomes a version.
//!
//! Pure: typed inputs, a list of reasons out. The HTTP layer picks the level and loads the
//! versions; [`versions_to_check`] says which of them a level looks at.

use std::fmt;
use std::str::FromStr;

use apache_avro::schema_compatibility::{Compatibility, SchemaCompatibility};
use apache_avro::Schema;

/// How a new version of a subject must relate to the versions before it (Confluent's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompatibilityLevel {
    /// The new schema can read data written with the latest version.
    Backward,
    /// The new schema can read data written with every live version.
    BackwardTransitive,
    /// The latest version can read data written with the new schema.
    Forward,
    /// Every live version can read data written with the new schema.
    ForwardTransitive,
    /// Backward and forward against the latest version.
    Full,
    /// Backward and forward against every live version.
    FullTransitive,
    /// No check.
    None,
}

/// A compatibility level name that is not one of the seven Confluent defines.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown compatibility level '{0}'")]
pub struct UnknownLevel(pub String);

impl CompatibilityLevel {
    /// What a registry uses when neither the subject nor the global config names a level.
    pub const DEFAULT: CompatibilityLevel = CompatibilityLevel::Backward;

    /// Every level, in the order Confluent documents them.
    pub const ALL: [CompatibilityLevel; 7] = [
        CompatibilityLevel::Backward,
        CompatibilityLevel::BackwardTransitive,
        CompatibilityLevel::Forward,
        CompatibilityLevel::ForwardTransitive,
        CompatibilityLevel::Full,
        CompatibilityLevel::FullTransitive,
        CompatibilityLevel::None,
    ];

    /// The wire name, e.g. `BACKWARD_TRANSITIVE`.
    pub fn as_str(self) -> &'static str {
        match self {
            CompatibilityLevel::Backward => "BACKWARD",
            CompatibilityLevel::BackwardTransitive => "BACKWARD_TRANSITIVE",
            CompatibilityLevel::Forward => "FORWARD",
            CompatibilityLevel::ForwardTransitive => "FORWARD_TRANSITIVE",
            CompatibilityLevel::Full => "FULL",
            CompatibilityLevel::FullTransitive => "FULL_TRANSITIVE",
            CompatibilityLevel::None => "NONE",
        }
    }

    /// True when the level checks against every live version, not only the latest.
    pub fn is_transitive(self) -> bool {
        matches!(self, CompatibilityLevel::BackwardTransitive | CompatibilityLevel::ForwardTransitive | CompatibilityLevel::FullTransitive)
    }

    fn checks_backward(self) -> bool {
        matches!(self, CompatibilityLevel::Backward | CompatibilityLevel::BackwardTransitive | CompatibilityLevel::Full | CompatibilityLevel::FullTransitive)
    }

    fn checks_forward(self) -> bool {
        matches!(self, CompatibilityLevel::Forward | CompatibilityLevel::ForwardTransitive | CompatibilityLevel::Full | CompatibilityLevel::FullTransitive)
    }
}

impl FromStr for CompatibilityLevel {
    type Err = UnknownLevel;

    /// Case-insensitive, as Confluent accepts `backward` as well as `BACKWARD`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        CompatibilityLevel::ALL.into_iter().find(|level| level.as_str().eq_ignore_ascii_case(s.trim())).ok_or_else(|| UnknownLevel(s.to_string()))
    }
}

impl fmt::Display for CompatibilityLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The live versions (oldest first) a registration under `level` is checked against: the latest
/// for the plain levels, all of them for the transitive ones, none for `NONE`.
pub fn versions_to_check<T>(level: CompatibilityLevel, live: &[T]) -> &[T] {
    if level == CompatibilityLevel::None {
        &[]
    } else if level.is_transitive() {
        live
    } else {
        &live[live.len().saturating_sub(1)..]
    }
}

/// Checks `candidate` against each `(version, schema)` in the directions `level` requires.
///
/// Returns why the candidate is incompatible, one line per failed check; empty means compatible.
/// Which versions to pass is the caller's choice (see [`versions_to_check`]): this function checks
/// every one it is given.
pub fn check(level: CompatibilityLevel, candidate: &Schema, existing: &[(i64, Schema)]) -> Vec<String> {
    let mut problems = Vec::new();
    for (version, schema) in existing {
        if level.checks_backward() {
            if let Err(why) = can_read(schema, candidate) {
                problems.push(format!("the new schema cannot read data written with version {version} (backward): {why}"));
            }
        }
        if level.checks_forward() {
            if let Err(why) = can_read(candidate, schema) {
                problems.push(format!("version {version} cannot read data written with the new schema (forward): {why}"));
            }
        }
    }
    problems
}

/// Whether data written with `writer` can always be read with `reader`.
///
/// apache-avro answers `Partial` when only some writer union branches or enum symbols resolve;
/// Confluent (Java Avro) rejects those, because a record holding the missing branch or symbol
/// would fail to decode, so `Partial` is an incompatibility here.
fn can_read(writer: &Schema, reader: &Schema) -> Result<(), String> {
    match SchemaCompatibility::can_read(writer, reader) {
        Ok(Compatibility::Full) => Ok(()),
        Ok(Compatibility::Partial) => Err("some union branches or enum symbols of the writer have no match in the reader".to_string()),
        Err(e) => Err(error_chain(&e)),
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use CompatibilityLevel::*;

    fn record(fields: &str) -> Schema {
        Schema::parse_str(&format!(r#"{{"type":"record","name":"Order","fields":[{fields}]}}"#)).expect("test schema parses")
    }

    fn v1() -> Schema {
        record(r#"{"name":"id","type":"string"}"#)
    }

    fn compatible(level: CompatibilityLevel, candidate: &Schema, existing: &[(i64, Schema)]) -> bool {
        check(level, candidate, existing).is_empty()
    }

    #[test]
    fn adding_a_field_with_default_is_backward_and_forward_compatible() {
        let new = record(r#"{"name":"id","type":"string"},{"name":"qty","type":"int","default":1}"#);
        let old = [(1, v1())];
        assert!(compatible(Backward, &new, &old));
        assert!(compatible(Forward, &new, &old));
        assert!(compatible(Full, &new, &old));
    }

    #[test]
    fn adding_a_field_without_default_is_not_backward_compatible() {
        let new = record(r#"{"name":"id","type":"string"},{"name":"qty","type":"int"}"#);
        let old = [(1, v1())];
        let problems = check(Backward, &new, &old);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("version 1"), "{}", problems[0]);
        assert!(problems[0].contains("qty"), "names the field: {}", problems[0]);
        // Old readers ignore the extra field, so the change is still forward compatible.
        assert!(compatible(Forward, &new, &old));
        assert!(!compatible(Full, &new, &old));
    }

    #[test]
    fn removing_a_field_without_default_breaks_forward_only() {
        let old = [(1, record(r#"{"name":"id","type":"string"},{"name":"qty","type":"int"}"#))];
        let new = v1();
        assert!(compatible(Backward, &new, &old), "new readers ignore the written field");
        let problems = check(Forward, &new, &old);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("forward"), "{}", problems[0]);
    }

    #[test]
    fn removing_a_field_that_had_a_default_stays_forward_compatible() {
        let old = [(1, record(r#"{"name":"id","type":"string"},{"name":"qty","type":"int","default":0}"#))];
        assert!(compatible(Full, &v1(), &old));
    }

    #[test]
    fn int_widens_to_long_only_backward() {
        let old = [(1, record(r#"{"name":"n","type":"int"}"#))];
        let new = record(r#"{"name":"n","type":"long"}"#);
        assert!(compatible(Backward, &new, &old));
        assert!(!compatible(Forward, &new, &old), "an int reader cannot read a long");
    }

    #[test]
    fn adding_an_enum_symbol_is_backward_but_not_forward_compatible() {
        let enum_of = |symbols: &str| Schema::parse_str(&format!(r#"{{"type":"enum","name":"Status","symbols":[{symbols}]}}"#)).expect("test enum parses");
        let old = [(1, enum_of(r#""NEW","PAID""#))];
        let new = enum_of(r#""NEW","PAID","SHIPPED""#);
        assert!(compatible(Backward, &new, &old));
        // The old reader lacks SHIPPED: apache-avro calls that partial, Confluent incompatible.
        let problems = check(Forward, &new, &old);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("enum symbols"), "{}", problems[0]);
    }

    #[test]
    fn changing_a_field_type_is_incompatible_both_ways() {
        let old = [(1, record(r#"{"name":"id","type":"string"}"#))];
        let new = record(r#"{"name":"id","type":"boolean"}"#);
        let problems = check(Full, &new, &old);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(compatible(None, &new, &old));
    }

    #[test]
    fn transitive_levels_see_every_version_plain_levels_only_the_latest() {
        // v1 {a:int} -> v2 {} -> v3 {a:string=""}: v3 reads v2 data (default) but not v1's int.
        let live = vec![(1, record(r#"{"name":"a","type":"int"}"#)), (2, record(""))];
        let new = record(r#"{"name":"a","type":"string","default":""}"#);
        assert!(compatible(Backward, &new, versions_to_check(Backward, &live)));
        let problems = check(BackwardTransitive, &new, versions_to_check(BackwardTransitive, &live));
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("version 1"), "{}", problems[0]);
    }

    #[test]
    fn versions_to_check_picks_latest_all_or_none() {
        let live = [1, 2, 3];
        assert_eq!(versions_to_check(Forward, &live), &[3]);
        assert_eq!(versions_to_check(FullTransitive, &live), &[1, 2, 3]);
        assert!(versions_to_check(None, &live).is_empty());
        assert!(versions_to_check::<i32>(Backward, &[]).is_empty());
    }

    #[test]
    fn levels_parse_case_insensitively_and_round_trip() {
        for level in CompatibilityLevel::ALL {
            assert_eq!(level.as_str().parse::<CompatibilityLevel>(), Ok(level));
            assert_eq!(level.as_str().to_lowercase().parse::<CompatibilityLevel>(), Ok(level));
        }
        assert_eq!("SIDEWAYS".parse::<CompatibilityLevel>(), Err(UnknownLevel("SIDEWAYS".into())));
        assert_eq!(CompatibilityLevel::DEFAULT, Backward);
    }
}
