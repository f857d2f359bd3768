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
                StepKind::Compensatable if pivot.is_some_and(|p| i > p) => return Err(format!("{}: compensatable step {} after the pivot", self.name, s.name)),
                StepKind::Retriable if pivot.is_some_and(|p| i < p) => return Err(format!("{}: retriable step {} before the pivot", self.name, s.name)),
                StepKind::Pivot | StepKind::Retriable if s.compensation.is_some() => {
                    return Err(format!("{}: step {} cannot be compensated", self.name, s.name))
                }
                StepKind::Compensatable | StepKind::Retriable if s.cancel.is_some() => {
                    return Err(format!("{}: only a pivot has a cancel action ({})", self.name, s.name))
                }
                _ if s.timeout_ms == 0 => return Err(format!("{}: step {} has no timeout", self.name, s.name)),
                _ => {}
            }
        }
        if self.compensation_timeout_ms == 0 {
            return Err(format!("{}: compensations have no timeout", self.name));
        }
        Ok(())
    }
}

/// The order saga: reserve stock, authorize payment (pivot), approve the order; on failure,
/// release the stock and reject the order.
pub fn order_saga() -> SagaDefinition {
    SagaDefinition {
        name: "order",
        version: 1,
        steps: vec![
            Step {
                name: "reserve_stock",
                kind: StepKind::Compensatable,
                action: Action::ReserveStock,
                succeeded_on: Reply::StockReserved,
                failed_on: &[Reply::StockReservationFailed],
                compensation: Some(Compensation { action: Action::ReleaseStock, done_on: Reply::StockReleased }),
                cancel: None,
                timeout_ms: 30_000,
            },
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
            },
            Step {
                name: "approve_order",
                kind: StepKind::Retriable,
                action: Action::ApproveOrder,
                succeeded_on: Reply::OrderApproved,
                failed_on: &[],
                compensation: None,
                cancel: None,
                timeout_ms: 30_000,
            },
        ],
        on_compensated: Compensation { action: Action::RejectOrder, done_on: Reply::OrderRejected },
        compensation_timeout_ms: 30_000,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_order_saga_is_well_formed() {
        assert_eq!(order_saga().validate(), Ok(()));
    }

    #[test]
    fn validation_catches_malformed_definitions() {
        let mut d = order_saga();
        d.steps[0].compensation = None;
        assert!(d.validate().unwrap_err().contains("has no compensation"));
        let mut d = order_saga();
        d.steps[2].kind = StepKind::Pivot;
        assert!(d.validate().unwrap_err().contains("more than one pivot"));
        let mut d = order_saga();
        d.steps.swap(0, 2);
        assert!(d.validate().is_err());
        let mut d = order_saga();
        d.steps[1].timeout_ms = 0;
        assert!(d.validate().unwrap_err().contains("has no timeout"));
        let mut d = order_saga();
        d.steps[2].cancel = d.steps[1].cancel;
        assert!(d.validate().unwrap_err().contains("only a pivot"));
    }
}
