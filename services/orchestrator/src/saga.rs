//! The saga interpreter: a pure state machine over a [`SagaDefinition`].
//!
//! Forward, it sends each step's command and waits for its reply. When a step before or at the
//! pivot fails, it compensates the completed compensatable steps in reverse order, then sends
//! the definition's final action. A retriable step that fails is sent again. A reply the saga
//! is not waiting for is ignored, with the reason, and never applied to another step.
//!
//! Every wait has a deadline ([`deadline_in_ms`]). When it passes ([`on_timeout`]), a step
//! before the pivot (or the pivot) is undone as if it had failed: its own compensation (or the
//! pivot's cancel) goes out first, because its command may still land, and the participants
//! make a late forward action harmless; a check, which changed nothing, fails as if rejected. A retriable step, a compensation and the final action
//! are sent again with a new attempt number, backing off; a compensation still unconfirmed after
//! [`Timing::max_compensation_attempts`] leaves the saga STUCK. A dead-lettered message of the
//! saga PARKs it ([`park`]). Operators [`retry`] the awaited command or [`abort`] (compensate
//! from where the saga stands; [`abort_plan`] lists what that would send).

use crate::definition::{Action, Reply, SagaDefinition, StepKind};

/// The lifecycle of a saga instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Going forward.
    Running,
    /// A step failed; undoing.
    Compensating,
    /// Every step succeeded.
    Completed,
    /// A step failed and everything was undone.
    Compensated,
    /// A compensation (or the final action) went unconfirmed after every attempt; an operator
    /// must look. Never counted as compensated.
    Stuck,
    /// A message of this saga was dead-lettered; the saga waits for an operator (redrive, retry
    /// or abort) instead of for a reply that cannot come.
    Parked,
}

impl Status {
    /// Stored form.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Running => "RUNNING",
            Status::Compensating => "COMPENSATING",
            Status::Completed => "COMPLETED",
            Status::Compensated => "COMPENSATED",
            Status::Stuck => "STUCK",
            Status::Parked => "PARKED",
        }
    }

    /// Every status.
    pub const ALL: [Status; 6] = [Status::Running, Status::Compensating, Status::Completed, Status::Compensated, Status::Stuck, Status::Parked];

    /// Parses the stored form.
    pub fn parse(s: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|x| x.as_str() == s)
    }

    /// True when nothing more will happen.
    pub fn is_terminal(self) -> bool {
        matches!(self, Status::Completed | Status::Compensated)
    }

    /// True while the saga waits on a deadline (not terminal, not waiting for an operator).
    pub fn is_timed(self) -> bool {
        matches!(self, Status::Running | Status::Compensating)
    }
}

/// What the saga is waiting for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Position {
    /// The reply of forward step `i`.
    Step(usize),
    /// The reply of the compensation of step `i`.
    Compensation(usize),
    /// The reply of the definition's final action after compensation.
    Finalizing,
    /// Nothing: the saga is over.
    Done,
}

impl Position {
    /// Stored form: `step:1`, `compensation:0`, `finalizing`, `done`.
    pub fn encode(self) -> String {
        match self {
            Position::Step(i) => format!("step:{i}"),
            Position::Compensation(i) => format!("compensation:{i}"),
            Position::Finalizing => "finalizing".into(),
            Position::Done => "done".into(),
        }
    }

    /// Parses the stored form.
    pub fn decode(s: &str) -> Option<Position> {
        match s.split_once(':') {
            Some(("step", i)) => i.parse().ok().map(Position::Step),
            Some(("compensation", i)) => i.parse().ok().map(Position::Compensation),
            None if s == "finalizing" => Some(Position::Finalizing),
            None if s == "done" => Some(Position::Done),
            _ => None,
        }
    }
}

/// The interpreter's view of a saga instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SagaState {
    /// Lifecycle.
    pub status: Status,
    /// What it waits for.
    pub position: Position,
    /// How many times the awaited command was sent.
    pub attempt: u32,
    /// Why the saga is compensating, once a step failed.
    pub failure: Option<String>,
    /// Why the saga is STUCK or PARKED.
    pub blocked: Option<String>,
}

impl SagaState {
    fn moving(status: Status, position: Position, attempt: u32, failure: Option<String>) -> SagaState {
        SagaState { status, position, attempt, failure, blocked: None }
    }
}

/// Deadlines and retry limits, from the definition and configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// Overrides every step's and compensation's first-attempt timeout when set.
    pub timeout_override_ms: Option<u64>,
    /// Longest wait after backing off.
    pub max_delay_ms: u64,
    /// Attempts of a compensation (or the final action) before the saga is STUCK.
    pub max_compensation_attempts: u32,
}

impl Default for Timing {
    fn default() -> Self {
        Timing { timeout_override_ms: None, max_delay_ms: 300_000, max_compensation_attempts: 5 }
    }
}

/// Which side of a step a command belongs to; part of its idempotency key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// The step's own action.
    Do,
    /// Its compensation.
    Undo,
    /// The final action after compensation.
    Finalize,
}

impl Phase {
    /// Short form for keys and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Do => "do",
            Phase::Undo => "undo",
            Phase::Finalize => "finalize",
        }
    }
}

/// A command the saga decided to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// What to send.
    pub action: Action,
    /// The step it belongs to (`finalize` for the final action).
    pub step: &'static str,
    /// Do, undo or finalize.
    pub phase: Phase,
    /// 1 for the first send, more for retries.
    pub attempt: u32,
}

impl Command {
    /// The command's idempotency key within its saga: the same decision always yields the same
    /// key, so a command published twice is applied once.
    pub fn key(&self, saga_id: &str) -> String {
        format!("{saga_id}:{}:{}:{}", self.step, self.phase.as_str(), self.attempt)
    }
}

/// The result of applying an input: the new state, what to send, and what to write in the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// State after the input.
    pub state: SagaState,
    /// Commands to send, in order.
    pub commands: Vec<Command>,
    /// What happened, for the saga log: `started`, `step-succeeded`, `completed`, `step-failed`,
    /// `step-retried`, `step-compensated`, `compensated`, `step-timed-out`,
    /// `compensation-retried`, `stuck`, `parked`, `operator-retried`, `operator-aborted`.
    pub event: &'static str,
    /// The step the event concerns.
    pub step: &'static str,
    /// Why, when the input itself does not say (a timeout, an operator, a dead letter).
    pub detail: Option<String>,
}

/// What a reply did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The saga moved.
    Applied(Transition),
    /// The saga was not waiting for this reply; nothing changes.
    Ignored(String),
}

/// Starts a saga: send the first step's command.
pub fn start(def: &SagaDefinition) -> Transition {
    let first = &def.steps[0];
    Transition {
        state: SagaState::moving(Status::Running, Position::Step(0), 1, None),
        commands: vec![Command { action: first.action, step: first.name, phase: Phase::Do, attempt: 1 }],
        event: "started",
        step: first.name,
        detail: None,
    }
}

/// Applies a reply to a saga in `state`. `reason` is the failure reason a failure reply carries.
pub fn on_reply(def: &SagaDefinition, state: &SagaState, reply: Reply, reason: Option<&str>) -> Outcome {
    match state.position {
        Position::Step(i) => {
            let step = &def.steps[i];
            if reply == step.succeeded_on {
                return Outcome::Applied(match def.steps.get(i + 1) {
                    Some(next) => Transition {
                        state: SagaState::moving(Status::Running, Position::Step(i + 1), 1, None),
                        commands: vec![Command { action: next.action, step: next.name, phase: Phase::Do, attempt: 1 }],
                        event: "step-succeeded",
                        step: step.name,
                        detail: None,
                    },
                    None => Transition {
                        state: SagaState::moving(Status::Completed, Position::Done, 0, None),
                        commands: vec![],
                        event: "completed",
                        step: step.name,
                        detail: None,
                    },
                });
            }
            if step.failed_on.contains(&reply) {
                let failure = Some(reason.unwrap_or("step failed").to_string());
                if step.kind == StepKind::Retriable {
                    let attempt = state.attempt + 1;
                    return Outcome::Applied(Transition {
                        state: SagaState::moving(Status::Running, state.position, attempt, failure),
                        commands: vec![Command { action: step.action, step: step.name, phase: Phase::Do, attempt }],
                        event: "step-retried",
                        step: step.name,
                        detail: None,
                    });
                }
                let (position, commands) = compensate_from(def, i);
                return Outcome::Applied(Transition {
                    state: SagaState::moving(Status::Compensating, position, 1, failure),
                    commands,
                    event: "step-failed",
                    step: step.name,
                    detail: None,
                });
            }
            Outcome::Ignored(format!("{reply:?} does not answer step {} ({:?})", step.name, step.action))
        }
        Position::Compensation(j) => {
            let step = &def.steps[j];
            let compensation = step.undo().expect("a compensation position points at a step that can be undone");
            if reply != compensation.done_on {
                return Outcome::Ignored(format!("{reply:?} does not answer the compensation of step {}", step.name));
            }
            let (position, commands) = compensate_from(def, j);
            Outcome::Applied(Transition {
                state: SagaState::moving(Status::Compensating, position, 1, state.failure.clone()),
                commands,
                event: "step-compensated",
                step: step.name,
                detail: None,
            })
        }
        Position::Finalizing => {
            if reply != def.on_compensated.done_on {
                return Outcome::Ignored(format!("{reply:?} does not answer the final action {:?}", def.on_compensated.action));
            }
            Outcome::Applied(Transition {
                state: SagaState::moving(Status::Compensated, Position::Done, 0, state.failure.clone()),
                commands: vec![],
                event: "compensated",
                step: "finalize",
                detail: None,
            })
        }
        Position::Done => Outcome::Ignored(format!("{reply:?} arrived after the saga ended")),
    }
}

/// How long after entering `state` its wait times out, in milliseconds: the awaited step's (or
/// compensation's) timeout, doubled for every attempt after the first, at most
/// [`Timing::max_delay_ms`]. `None` when nothing is awaited on a deadline (ended, STUCK, PARKED).
/// The caller adds jitter.
pub fn deadline_in_ms(def: &SagaDefinition, state: &SagaState, timing: &Timing) -> Option<u64> {
    if !state.status.is_timed() {
        return None;
    }
    let base = match state.position {
        Position::Step(i) => def.steps[i].timeout_ms,
        Position::Compensation(_) | Position::Finalizing => def.compensation_timeout_ms,
        Position::Done => return None,
    };
    let base = timing.timeout_override_ms.unwrap_or(base).max(1);
    let factor = 1u64 << state.attempt.saturating_sub(1).min(30);
    Some(base.saturating_mul(factor).min(timing.max_delay_ms.max(base)))
}

/// The awaited wait passed its deadline without a reply.
pub fn on_timeout(def: &SagaDefinition, state: &SagaState, timing: &Timing) -> Outcome {
    if !state.status.is_timed() {
        return Outcome::Ignored(format!("a {} saga has no deadline", state.status.as_str()));
    }
    let failure = state.failure.clone();
    match state.position {
        Position::Step(i) => {
            let step = &def.steps[i];
            let waited = format!("no reply to {} (attempt {}) before its deadline", step.name, state.attempt);
            match step.undo() {
                Some(undo) if step.kind != StepKind::Retriable => Outcome::Applied(Transition {
                    state: SagaState::moving(Status::Compensating, Position::Compensation(i), 1, Some(format!("step {} timed out", step.name))),
                    commands: vec![Command { action: undo.action, step: step.name, phase: Phase::Undo, attempt: 1 }],
                    event: "step-timed-out",
                    step: step.name,
                    detail: Some(waited),
                }),
                // A check changed nothing: compensate the steps before it; a late answer is ignored.
                None if step.kind == StepKind::Check => {
                    let (position, commands) = compensate_from(def, i);
                    Outcome::Applied(Transition {
                        state: SagaState::moving(Status::Compensating, position, 1, Some(format!("step {} timed out", step.name))),
                        commands,
                        event: "step-timed-out",
                        step: step.name,
                        detail: Some(waited),
                    })
                }
                _ => {
                    let attempt = state.attempt + 1;
                    Outcome::Applied(Transition {
                        state: SagaState::moving(Status::Running, state.position, attempt, failure),
                        commands: vec![Command { action: step.action, step: step.name, phase: Phase::Do, attempt }],
                        event: "step-retried",
                        step: step.name,
                        detail: Some(waited),
                    })
                }
            }
        }
        Position::Compensation(_) | Position::Finalizing => {
            let command = awaited_command(def, state.position, state.attempt).expect("a compensation position has a command");
            let waited = format!("{:?} of {} unconfirmed after attempt {}", command.action, command.step, state.attempt);
            if state.attempt >= timing.max_compensation_attempts {
                let reason = format!("{waited}; gave up after {} attempts", timing.max_compensation_attempts);
                return Outcome::Applied(Transition {
                    state: SagaState { status: Status::Stuck, blocked: Some(reason.clone()), ..state.clone() },
                    commands: vec![],
                    event: "stuck",
                    step: command.step,
                    detail: Some(reason),
                });
            }
            let attempt = state.attempt + 1;
            Outcome::Applied(Transition {
                state: SagaState::moving(Status::Compensating, state.position, attempt, failure),
                commands: vec![Command { attempt, ..command }],
                event: "compensation-retried",
                step: command.step,
                detail: Some(waited),
            })
        }
        Position::Done => Outcome::Ignored("the saga has ended".into()),
    }
}

/// A message of the saga was dead-lettered: the saga stops waiting on its deadline and waits for
/// an operator. A reply that still arrives moves it on as usual.
pub fn park(state: &SagaState, reason: &str) -> Outcome {
    if state.status.is_terminal() {
        return Outcome::Ignored(format!("the saga already ended {}; {reason}", state.status.as_str()));
    }
    Outcome::Applied(Transition {
        state: SagaState { status: Status::Parked, blocked: Some(reason.to_string()), ..state.clone() },
        commands: vec![],
        event: "parked",
        step: "-",
        detail: Some(reason.to_string()),
    })
}

/// Operator: send the awaited command again (a new attempt, so a new idempotency key), and wait
/// on a fresh deadline. For a STUCK saga this is one more attempt, after which it is STUCK again
/// if still unconfirmed.
pub fn retry(def: &SagaDefinition, state: &SagaState) -> Result<Transition, String> {
    if state.status.is_terminal() {
        return Err(format!("the saga already ended {}", state.status.as_str()));
    }
    let attempt = state.attempt + 1;
    let command = awaited_command(def, state.position, attempt).ok_or("the saga awaits nothing")?;
    let status = if matches!(state.position, Position::Step(_)) { Status::Running } else { Status::Compensating };
    Ok(Transition {
        state: SagaState::moving(status, state.position, attempt, state.failure.clone()),
        step: command.step,
        commands: vec![command],
        event: "operator-retried",
        detail: Some(format!("{} sent again by an operator (was {})", state.position.encode(), state.status.as_str())),
    })
}

/// Operator: compensate from where the saga stands. Only a saga still before or at its pivot
/// can be aborted; the awaited step is undone first, as on a timeout, since its command may
/// still land.
pub fn abort(def: &SagaDefinition, state: &SagaState, reason: &str) -> Result<Transition, String> {
    if state.status.is_terminal() {
        return Err(format!("the saga already ended {}", state.status.as_str()));
    }
    let Position::Step(i) = state.position else {
        return Err(format!("the saga is already compensating ({}); `retry` sends the awaited compensation again", state.position.encode()));
    };
    let step = &def.steps[i];
    if step.kind == StepKind::Retriable {
        return Err(format!("the saga is past its pivot (at {}); it can only go forward: `retry` sends the step again", step.name));
    }
    let failure = Some(format!("aborted by an operator: {reason}"));
    let (position, commands) = match step.undo() {
        Some(undo) => (Position::Compensation(i), vec![Command { action: undo.action, step: step.name, phase: Phase::Undo, attempt: 1 }]),
        None => compensate_from(def, i),
    };
    Ok(Transition {
        state: SagaState::moving(Status::Compensating, position, 1, failure),
        commands,
        event: "operator-aborted",
        step: step.name,
        detail: Some(reason.to_string()),
    })
}

/// Every command an [`abort`] would lead to, in order, if each is confirmed at its first attempt:
/// the undo of the awaited step, the compensations of the steps before it (latest first), and the
/// final action.
pub fn abort_plan(def: &SagaDefinition, state: &SagaState) -> Result<Vec<Command>, String> {
    let first = abort(def, state, "plan")?;
    let mut plan = first.commands;
    let mut position = first.state.position;
    while let Position::Compensation(j) = position {
        let (next, commands) = compensate_from(def, j);
        plan.extend(commands);
        position = next;
    }
    Ok(plan)
}

/// The command the saga waits on at `position`, as attempt `attempt`.
pub fn awaited_command(def: &SagaDefinition, position: Position, attempt: u32) -> Option<Command> {
    Some(match position {
        Position::Step(i) => Command { action: def.steps[i].action, step: def.steps[i].name, phase: Phase::Do, attempt },
        Position::Compensation(j) => Command { action: def.steps[j].undo()?.action, step: def.steps[j].name, phase: Phase::Undo, attempt },
        Position::Finalizing => Command { action: def.on_compensated.action, step: "finalize", phase: Phase::Finalize, attempt },
        Position::Done => return None,
    })
}

/// Where compensation goes after step `from` failed or was compensated: the nearest earlier
/// compensatable step, or the final action when none is left.
fn compensate_from(def: &SagaDefinition, from: usize) -> (Position, Vec<Command>) {
    match (0..from).rev().find(|&j| def.steps[j].compensation.is_some()) {
        Some(j) => {
            let c = def.steps[j].compensation.expect("found by is_some");
            (Position::Compensation(j), vec![Command { action: c.action, step: def.steps[j].name, phase: Phase::Undo, attempt: 1 }])
        }
        None => (Position::Finalizing, vec![Command { action: def.on_compensated.action, step: "finalize", phase: Phase::Finalize, attempt: 1 }]),
    }
}

#[cfg(test)]
mod tests;
