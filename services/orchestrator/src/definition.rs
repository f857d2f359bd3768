//! Saga definitions as data: steps, their commands, their compensations, their kinds.
//! The interpreter in [`crate::saga`] runs any definition; nothing here is order-specific logic.

/// A command the orchestrator can send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Inventory: reserve the order's lines.
    ReserveStock,
    /// Inventory: release the order's reservation.
    ReleaseStock,
    /// Payment: authorize the order total.
    AuthorizePayment,
    /// Payment: void the order's authorization.
    VoidPayment,
    /// Order: approve.
    ApproveOrder,
    /// Order: reject.
    RejectOrder,
    /// Payment: assess the order's fraud risk (order saga v2).
    CheckRisk,
}

/// A reply the orchestrator can receive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reply {
    /// Inventory reserved every line.
    StockReserved,
    /// Inventory reserved nothing.
    StockReservationFailed,
    /// Inventory released the reservation (or there was none).
    StockReleased,
    /// Payment authorized.
    PaymentAuthorized,
    /// Payment declined.
    PaymentDeclined,
    /// Payment voided (or there was nothing to void).
    PaymentVoided,
    /// The order is approved.
    OrderApproved,
    /// The order is rejected.
    OrderRejected,
    /// The order's risk is acceptable.
    RiskAccepted,
    /// The order's risk is too high.
    RiskRejected,
}

/// How a step behaves when it fails, in the sense of Garcia-Molina's sagas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepKind {
    /// Can be undone by its compensation; a failure here or later (up to the pivot) undoes it.
    Compensatable,
    /// The point of no return: once it succeeds, the saga only goes forward.
    Pivot,
    /// After the pivot: cannot fail for good, so it is retried until it succeeds.
    Retriable,
    /// Before the pivot, with no effect to undo (a check that only reads): its failure or its
    /// timeout compensates the steps before it, and compensation passes it by.
    Check,
}

impl StepKind {
    /// Lower-case name, for tables and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            StepKind::Compensatable => "compensatable",
            StepKind::Pivot => "pivot",
            StepKind::Retriable => "retriable",
            StepKind::Check => "check",
        }
    }
}

/// An undo action and the reply that confirms it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compensation {
    /// Command to send.
    pub action: Action,
    /// Reply that confirms it is done.
    pub done_on: Reply,
}

/// One step of a saga.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// Stable name, used in idempotency keys and the saga log.
    pub name: &'static str,
    /// Compensatable, pivot or retriable.
    pub kind: StepKind,
    /// Command that performs the step.
    pub action: Action,
    /// Reply meaning the step succeeded.
    pub succeeded_on: Reply,
    /// Replies meaning the step failed.
    pub failed_on: &'static [Reply],
    /// How to undo the step, for compensatable steps.
    pub compensation: Option<Compensation>,
    /// For a pivot: the command that makes its outcome harmless when its reply never came (the
    /// participant voids what was done, or refuses it if it arrives later). Used only on a
    /// timeout or an operator abort, never after a reply said the step failed.
    pub cancel: Option<Compensation>,
    /// How long to wait for the step's reply before a timeout (first attempt; retries back off).
    pub timeout_ms: u64,
}

impl Step {
    /// What undoes this step when its outcome is unknown: its compensation, or a pivot's cancel.
    pub fn undo(&self) -> Option<Compensation> {
        self.compensation.or(self.cancel)
    }
}

/// A saga type: its steps in order, and what to do once everything is compensated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SagaDefinition {
    /// Saga type name.
    pub name: &'static str,
    /// Stored on every instance, so an instance keeps running the definition it started with.
    pub version: i32,
    /// Forward steps.
    pub steps: Vec<Step>,
    /// Final action after a failure has been compensated (it must eventually succeed).
    pub on_compensated: Compensation,
    /// How long to wait for the reply of a compensation or of the final action (first attempt).
    pub compensation_timeout_ms: u64,
}

impl SagaDefinition {
    /// Checks the rules a definition must follow: at most one pivot; compensatable steps (and
    /// only they) have a compensation and come before the pivot; retriable steps come after it.
    pub fn validate(&self) -> Result<(), String> {
        let pivot = self.steps.iter().position(|s| s.kind == StepKind::Pivot);
        if self.steps.iter().filter(|s| s.kind == StepKind::Pivot).count() > 1 {
            return Err(format!("{}: more than one pivot", self.name));
        }
        for (i, s) in self.steps.iter().enumerate() {
            match s.kind {
                StepKind::Compensatable if s.compensation.is_none() => return Err(format!("{}: compensatable step {} has no compensation", self.name, s.name)),
                StepKind::Compensatable | StepKind::Check if pivot.is_some_and(|p| i > p) => {
                    return Err(format!("{}: {} step {} after the pivot", self.name, s.kind.as_str(), s.name))
                }
                StepKind::Retriable if pivot.is_some_and(|p| i < p) => return Err(format!("{}: retriable step {} before the pivot", self.name, s.name)),
                StepKind::Pivot | StepKind::Retriable | StepKind::Check if s.compensation.is_some() => {
                    return Err(format!("{}: step {} cannot be compensated", self.name, s.name))
                }
                StepKind::Compensatable | StepKind::Retriable | StepKind::Check if s.cancel.is_some() => {
                    return Err(format!("{}: only a pivot has a cancel action ({})", self.name, s.name))
                }
                _ if s.timeout_ms == 0 => return Err(format!("{}: step {} has no timeout", self.name, s.name)),
                _ => {}
            }
        }
        if self.steps.is_empty() {
            return Err(format!("{}: no steps", self.name));
        }
        let mut names: Vec<_> = self.steps.iter().map(|s| s.name).collect();
        names.sort_unstable();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            return Err(format!("{}: two steps are named {}", self.name, w[0]));
        }
        if self.compensation_timeout_ms == 0 {
            return Err(format!("{}: compensations have no timeout", self.name));
        }
        Ok(())
    }
}

/// The order saga, version 1: reserve stock, authorize payment (pivot), approve the order; on
/// failure, release the stock and reject the order.
pub fn order_saga_v1() -> SagaDefinition {
    SagaDefinition {
        name: "order",
        version: 1,
        steps: vec![reserve_stock(), authorize_payment(), approve_order()],
        on_compensated: Compensation { action: Action::RejectOrder, done_on: Reply::OrderRejected },
        compensation_timeout_ms: 30_000,
    }
}

/// The order saga, version 2: a fraud-risk check in payment between the reservation and the
/// authorization. After the reservation, so an order that cannot be fulfilled costs no risk
/// assessment (in practice often a paid call to a scoring service); before the authorization, so a
/// rejected order never holds the customer's credit. The check changes nothing, so it needs no
/// compensation: a rejection (or a check that times out) releases the stock and rejects the order.
pub fn order_saga_v2() -> SagaDefinition {
    let check_risk = Step {
        name: "check_risk",
        kind: StepKind::Check,
        action: Action::CheckRisk,
        succeeded_on: Reply::RiskAccepted,
        failed_on: &[Reply::RiskRejected],
        compensation: None,
        cancel: None,
        timeout_ms: 30_000,
    };
    SagaDefinition { version: 2, steps: vec![reserve_stock(), check_risk, authorize_payment(), approve_order()], ..order_saga_v1() }
}

/// Every version of the order saga this binary can run, oldest first. A version stays here while
/// any instance of it may be in flight (`sagactl definitions in-flight` says which are).
pub fn order_saga_versions() -> Vec<SagaDefinition> {
    vec![order_saga_v1(), order_saga_v2()]
}

fn reserve_stock() -> Step {
    Step {
        name: "reserve_stock",
        kind: StepKind::Compensatable,
        action: Action::ReserveStock,
        succeeded_on: Reply::StockReserved,
        failed_on: &[Reply::StockReservationFailed],
        compensation: Some(Compensation { action: Action::ReleaseStock, done_on: Reply::StockReleased }),
        cancel: None,
        timeout_ms: 30_000,
    }
}

fn authorize_payment() -> Step {
    Step {
        name: "authorize_payment",
        kind: StepKind::Pivot,
        action: Action::AuthorizePayment,
        succeeded_on: Reply::PaymentAuthorized,
        failed_on: &[Reply::PaymentDeclined],
        compensation: None,
        // An authorization whose reply is lost is voided; payment refuses a late one.
        cancel: Some(Compensation { action: Action::VoidPayment, done_on: Reply::PaymentVoided }),
        timeout_ms: 30_000,
    }
}

fn approve_order() -> Step {
    Step {
        name: "approve_order",
        kind: StepKind::Retriable,
        action: Action::ApproveOrder,
        succeeded_on: Reply::OrderApproved,
        failed_on: &[],
        compensation: None,
        cancel: None,
        timeout_ms: 30_000,
    }
}

/// The versions of one saga type an orchestrator knows, and the one new instances start on.
#[derive(Debug, Clone)]
pub struct Versions {
    known: Vec<SagaDefinition>,
    start: usize,
}

impl Versions {
    /// Every version in `known` (each valid, of one saga type, no version twice); new instances
    /// start on `start`, or on the newest when `None`.
    pub fn new(mut known: Vec<SagaDefinition>, start: Option<i32>) -> Result<Versions, String> {
        known.sort_by_key(|d| d.version);
        let name = known.first().ok_or("no saga definitions")?.name;
        for d in &known {
            d.validate()?;
            if d.name != name {
                return Err(format!("definitions of two saga types ({name}, {}) in one set", d.name));
            }
        }
        if let Some(w) = known.windows(2).find(|w| w[0].version == w[1].version) {
            return Err(format!("{name}: version {} defined twice", w[0].version));
        }
        let start = match start {
            None => known.len() - 1,
            Some(v) => known.iter().position(|d| d.version == v).ok_or_else(|| {
                format!("{name} has no version {v}; this binary knows {}", known.iter().map(|d| d.version.to_string()).collect::<Vec<_>>().join(", "))
            })?,
        };
        Ok(Versions { known, start })
    }

    /// The definition new instances start on.
    pub fn starting(&self) -> &SagaDefinition {
        &self.known[self.start]
    }

    /// The definition of `version`, if this binary knows it.
    pub fn get(&self, version: i64) -> Option<&SagaDefinition> {
        self.known.iter().find(|d| i64::from(d.version) == version)
    }

    /// Every known version, oldest first.
    pub fn all(&self) -> &[SagaDefinition] {
        &self.known
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_order_saga_version_is_well_formed() {
        for d in order_saga_versions() {
            assert_eq!(d.validate(), Ok(()), "version {}", d.version);
        }
    }

    #[test]
    fn versions_start_on_the_newest_unless_told_and_refuse_unknown_ones() {
        let v = Versions::new(order_saga_versions(), None).unwrap();
        assert_eq!(v.starting().version, 2);
        assert_eq!(Versions::new(order_saga_versions(), Some(1)).unwrap().starting().version, 1);
        assert_eq!(v.get(1).map(|d| d.steps.len()), Some(3));
        assert_eq!(v.get(2).map(|d| d.steps.len()), Some(4));
        assert!(v.get(3).is_none());
        let e = Versions::new(order_saga_versions(), Some(7)).unwrap_err();
        assert_eq!(e, "order has no version 7; this binary knows 1, 2");
        let e = Versions::new(vec![order_saga_v1(), order_saga_v1()], None).unwrap_err();
        assert!(e.contains("version 1 defined twice"), "{e}");
    }

    #[test]
    fn a_check_has_nothing_to_undo_and_stays_before_the_pivot() {
        let mut d = order_saga_v2();
        d.steps[1].compensation = Some(Compensation { action: Action::ReleaseStock, done_on: Reply::StockReleased });
        assert!(d.validate().unwrap_err().contains("cannot be compensated"));
        let mut d = order_saga_v2();
        d.steps.swap(1, 3);
        d.steps.swap(1, 2);
        assert!(d.validate().is_err());
        let mut d = order_saga_v2();
        d.steps[1].name = "reserve_stock";
        assert!(d.validate().unwrap_err().contains("two steps are named reserve_stock"));
    }

    #[test]
    fn validation_catches_malformed_definitions() {
        let mut d = order_saga_v1();
        d.steps[0].compensation = None;
        assert!(d.validate().unwrap_err().contains("has no compensation"));
        let mut d = order_saga_v1();
        d.steps[2].kind = StepKind::Pivot;
        assert!(d.validate().unwrap_err().contains("more than one pivot"));
        let mut d = order_saga_v1();
        d.steps.swap(0, 2);
        assert!(d.validate().is_err());
        let mut d = order_saga_v1();
        d.steps[1].timeout_ms = 0;
        assert!(d.validate().unwrap_err().contains("has no timeout"));
        let mut d = order_saga_v1();
        d.steps[2].cancel = d.steps[1].cancel;
        assert!(d.validate().unwrap_err().contains("only a pivot"));
    }
}
