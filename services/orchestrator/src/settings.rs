//! The orchestrator's own settings: the `[saga]` table of its configuration file and the
//! `SAGA_SAGA__*` variables, read beside the settings every service reads
//! ([`saga_runtime::ServiceSettings::load_with`]).

use saga_runtime::config::ConfigError;
use serde::{Deserialize, Serialize};

use crate::saga::Timing;

/// Step deadlines, retries and the definition version new sagas start on.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SagaSettings {
    /// First-attempt timeout of every step and compensation, in milliseconds; 0 keeps each step's
    /// own timeout from the saga definition (30 s for the order saga).
    pub step_timeout_ms: u64,
    /// Attempts of a compensation (or the final action) before the saga is STUCK.
    pub compensation_max_attempts: u32,
    /// Longest wait between attempts after exponential backoff, in milliseconds.
    pub retry_max_delay_ms: u64,
    /// How often due deadlines are looked for, in milliseconds.
    pub timer_interval_ms: u64,
    /// The order saga's definition version new sagas start on; 0 (the default) starts them on the
    /// newest this binary knows. Sagas already running stay on the version they started with.
    pub order_version: u32,
}

impl Default for SagaSettings {
    fn default() -> SagaSettings {
        SagaSettings { step_timeout_ms: 0, compensation_max_attempts: 5, retry_max_delay_ms: 300_000, timer_interval_ms: 500, order_version: 0 }
    }
}

impl saga_runtime::Section for SagaSettings {
    const NAME: &'static str = "saga";

    fn defaults() -> SagaSettings {
        SagaSettings::default()
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, why: &str| Err(ConfigError::Invalid { key: key.into(), reason: why.into() });
        if self.compensation_max_attempts < 1 {
            return invalid("saga.compensation_max_attempts", "must be at least 1");
        }
        if self.retry_max_delay_ms < 1 {
            return invalid("saga.retry_max_delay_ms", "must be at least 1");
        }
        if !(10..=60_000).contains(&self.timer_interval_ms) {
            return invalid("saga.timer_interval_ms", "must be between 10 and 60000");
        }
        Ok(())
    }
}

impl SagaSettings {
    /// The interpreter's deadlines and retry limits.
    pub fn timing(&self) -> Timing {
        Timing {
            timeout_override_ms: (self.step_timeout_ms > 0).then_some(self.step_timeout_ms),
            max_delay_ms: self.retry_max_delay_ms,
            max_compensation_attempts: self.compensation_max_attempts,
        }
    }
}

#[cfg(test)]
// figment's Jail API returns its large error type; nothing to gain from boxing it in tests.
#[allow(clippy::result_large_err)]
mod tests {
    use std::path::Path;

    use saga_runtime::ServiceSettings;

    use super::*;

    fn load(text: &str) -> Result<(ServiceSettings, SagaSettings), ConfigError> {
        let mut out = None;
        figment::Jail::expect_with(|jail| {
            jail.create_file("c.toml", text)?;
            out = Some(ServiceSettings::load_with::<SagaSettings>("orchestrator", Some(Path::new("c.toml"))));
            Ok(())
        });
        out.unwrap()
    }

    #[test]
    fn saga_timing_is_read_and_checked_with_the_key_named() {
        let (_, s) = load("[saga]\nstep_timeout_ms = 1500\ncompensation_max_attempts = 2\n").unwrap();
        assert_eq!((s.step_timeout_ms, s.compensation_max_attempts), (1500, 2));
        assert_eq!(s.timing().timeout_override_ms, Some(1500));
        let e = load("[saga]\ncompensation_max_attempts = 0\n").unwrap_err().to_string();
        assert!(e.contains("saga.compensation_max_attempts"), "{e}");
        let e = load("[saga]\ntimer_interval_ms = 1\n").unwrap_err().to_string();
        assert!(e.contains("saga.timer_interval_ms"), "{e}");
        let e = load("[saga]\norder_versio = 1\n").unwrap_err().to_string();
        assert!(e.contains("unknown key \"order_versio\" in saga"), "{e}");
    }

    #[test]
    fn the_other_services_refuse_a_saga_table() {
        let mut out = None;
        figment::Jail::expect_with(|jail| {
            jail.create_file("c.toml", "[saga]\nstep_timeout_ms = 1500\n")?;
            out = Some(ServiceSettings::load("payment", Some(Path::new("c.toml"))));
            Ok(())
        });
        let e = out.unwrap().unwrap_err().to_string();
        assert!(e.contains("unknown key \"saga\""), "{e}");
    }
}
