//! The saga interpreter: a pure state machine over a [`SagaDefinition`].
//!
//! Forward, it sends each step's command and waits for its reply. When a step before or at the
//! pivot fails, it compensates the completed compensatable steps in reverse order, then sends
//! the definition's final action. A retriable step that fails is sent again. A reply the saga
//! is not waiting for is ignored, with the reason, and never applied to another step.

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
}

impl Status {
    /// Stored form.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Running => "RUNNING",
            Status::Compensating => "COMPENSATING",
            Status::Completed => "COMPLETED",
            Status::Compensated => "COMPENSATED",
        }
    }

    /// Parses the stored form.
    pub fn parse(s: &str) -> Option<Status> {
        [Status::Running, Status::Compensating, Status::Completed, Status::Compensated].into_iter().find(|x| x.as_str() == s)
    }

    /// True when nothing more will happen.
    pub fn is_terminal(self) -> bool {
        matches!(self, Status::Completed | Status::Compensated)
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
    /// `step-retried`, `step-compensated`, `compensated`.
    pub event: &'static str,
    /// The step the event concerns.
    pub step: &'static str,
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
        state: SagaState { status: Status::Running, position: Position::Step(0), attempt: 1, failure: None },
        commands: vec![Command { action: first.action, step: first.name, phase: Phase::Do, attempt: 1 }],
        event: "started",
        step: first.name,
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
                        state: SagaState { status: Status::Running, position: Position::Step(i + 1), attempt: 1, failure: None },
                        commands: vec![Command { action: next.action, step: next.name, phase: Phase::Do, attempt: 1 }],
                        event: "step-succeeded",
                        step: step.name,
                    },
                    None => Transition {
                        state: SagaState { status: Status::Completed, position: Position::Done, attempt: 0, failure: None },
                        commands: vec![],
                        event: "completed",
                        step: step.name,
                    },
                });
            }
            if step.failed_on.contains(&reply) {
                let failure = Some(reason.unwrap_or("step failed").to_string());
                if step.kind == StepKind::Retriable {
                    let attempt = state.attempt + 1;
                    return Outcome::Applied(Transition {
                        state: SagaState { attempt, failure, ..state.clone() },
                        commands: vec![Command { action: step.action, step: step.name, phase: Phase::Do, attempt }],
                        event: "step-retried",
                        step: step.name,
                    });
                }
                let (position, commands) = compensate_from(def, i);
                return Outcome::Applied(Transition {
                    state: SagaState { status: Status::Compensating, position, attempt: 1, failure },
                    commands,
                    event: "step-failed",
                    step: step.name,
                });
            }
            Outcome::Ignored(format!("{reply:?} does not answer step {} ({:?})", step.name, step.action))
        }
        Position::Compensation(j) => {
            let step = &def.steps[j];
            let compensation = step.compensation.expect("a compensation position points at a compensatable step");
            if reply != compensation.done_on {
                return Outcome::Ignored(format!("{reply:?} does not answer the compensation of step {}", step.name));
            }
            let (position, commands) = compensate_from(def, j);
            Outcome::Applied(Transition {
                state: SagaState { status: Status::Compensating, position, attempt: 1, failure: state.failure.clone() },
                commands,
                event: "step-compensated",
                step: step.name,
            })
        }
        Position::Finalizing => {
            if reply != def.on_compensated.done_on {
                return Outcome::Ignored(format!("{reply:?} does not answer the final action {:?}", def.on_compensated.action));
            }
            Outcome::Applied(Transition {
                state: SagaState { status: Status::Compensated, position: Position::Done, attempt: 0, failure: state.failure.clone() },
                commands: vec![],
                event: "compensated",
                step: "finalize",
            })
        }
        Position::Done => Outcome::Ignored(format!("{reply:?} arrived after the saga ended")),
    }
}

/// Where compensation goes after step `from` failed or was compensated: the nearest earlier
/// compensatable step, or the final action when none is left.
fn compensate_from(def: &SagaDefinition, from: usize) -> (Position, Vec<Command>) {
    match (0..from).rev().find(|&j| def.steps[j].compensation.is_some()) {
        Some(j) => {
            let c = def.steps[j].compensation.expect("found by is_some");
            (Position::Compensation(j), vec![Command { action: c.action, step: def.steps[j].name, phase: Phase::Undo, attempt: 1 }])
        }
        None => (
            Position::Finalizing,
            vec![Command { action: def.on_compensated.action, step: "finalize", phase: Phase::Finalize, attempt: 1 }],
        ),
    }
}

#[cfg(test)]
mod tests;
