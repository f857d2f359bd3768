use super::*;
use crate::definition::{order_saga_v1 as order_saga, order_saga_v2};

fn apply(def: &SagaDefinition, state: &SagaState, reply: Reply) -> Transition {
    match on_reply(def, state, reply, Some("because")) {
        Outcome::Applied(t) => t,
        Outcome::Ignored(why) => panic!("{reply:?} was ignored: {why}"),
    }
}

fn actions(t: &Transition) -> Vec<Action> {
    t.commands.iter().map(|c| c.action).collect()
}

#[test]
fn happy_path_reserves_authorizes_approves_and_completes() {
    let def = order_saga();
    let t0 = start(&def);
    assert_eq!(actions(&t0), vec![Action::ReserveStock]);
    let t1 = apply(&def, &t0.state, Reply::StockReserved);
    assert_eq!(actions(&t1), vec![Action::AuthorizePayment]);
    assert_eq!(t1.event, "step-succeeded");
    let t2 = apply(&def, &t1.state, Reply::PaymentAuthorized);
    assert_eq!(actions(&t2), vec![Action::ApproveOrder]);
    let t3 = apply(&def, &t2.state, Reply::OrderApproved);
    assert_eq!(t3.state.status, Status::Completed);
    assert_eq!(t3.event, "completed");
    assert!(t3.commands.is_empty());
}

#[test]
fn out_of_stock_rejects_without_compensating_anything() {
    let def = order_saga();
    let t0 = start(&def);
    let t1 = apply(&def, &t0.state, Reply::StockReservationFailed);
    assert_eq!(t1.state.status, Status::Compensating);
    assert_eq!(t1.state.position, Position::Finalizing);
    assert_eq!(t1.state.failure.as_deref(), Some("because"));
    assert_eq!(actions(&t1), vec![Action::RejectOrder]);
    let t2 = apply(&def, &t1.state, Reply::OrderRejected);
    assert_eq!(t2.state.status, Status::Compensated);
    assert_eq!(t2.state.failure.as_deref(), Some("because"));
}

#[test]
fn declined_payment_releases_stock_then_rejects() {
    let def = order_saga();
    let t1 = apply(&def, &start(&def).state, Reply::StockReserved);
    let t2 = apply(&def, &t1.state, Reply::PaymentDeclined);
    assert_eq!(t2.event, "step-failed");
    assert_eq!(t2.state.position, Position::Compensation(0));
    assert_eq!(actions(&t2), vec![Action::ReleaseStock]);
    let t3 = apply(&def, &t2.state, Reply::StockReleased);
    assert_eq!(t3.event, "step-compensated");
    assert_eq!(actions(&t3), vec![Action::RejectOrder]);
    let t4 = apply(&def, &t3.state, Reply::OrderRejected);
    assert_eq!(t4.state.status, Status::Compensated);
}

#[test]
fn a_retriable_step_is_sent_again_with_a_new_key() {
    let mut def = order_saga();
    def.steps[2].failed_on = &[Reply::OrderRejected];
    let t1 = apply(&def, &start(&def).state, Reply::StockReserved);
    let t2 = apply(&def, &t1.state, Reply::PaymentAuthorized);
    let t3 = apply(&def, &t2.state, Reply::OrderRejected);
    assert_eq!(t3.event, "step-retried");
    assert_eq!(t3.state.status, Status::Running);
    assert_eq!(t3.commands[0].attempt, 2);
    assert_ne!(t3.commands[0].key("s"), t2.commands[0].key("s"));
}

#[test]
fn stray_and_late_replies_are_ignored() {
    let def = order_saga();
    let s0 = start(&def).state;
    assert!(matches!(on_reply(&def, &s0, Reply::PaymentAuthorized, None), Outcome::Ignored(_)));
    assert!(matches!(on_reply(&def, &s0, Reply::OrderApproved, None), Outcome::Ignored(_)));
    let s1 = apply(&def, &s0, Reply::StockReserved).state;
    // A duplicate StockReserved after the saga moved on does not move it again.
    assert!(matches!(on_reply(&def, &s1, Reply::StockReserved, None), Outcome::Ignored(_)));
    let compensating = apply(&def, &s1, Reply::PaymentDeclined).state;
    assert!(matches!(on_reply(&def, &compensating, Reply::PaymentAuthorized, None), Outcome::Ignored(_)));
    let done = SagaState { status: Status::Completed, position: Position::Done, attempt: 0, failure: None, blocked: None };
    assert!(matches!(on_reply(&def, &done, Reply::OrderApproved, None), Outcome::Ignored(_)));
}

#[test]
fn idempotency_keys_are_derived_from_saga_step_phase_and_attempt() {
    let def = order_saga();
    let t = start(&def);
    assert_eq!(t.commands[0].key("o-1"), "o-1:reserve_stock:do:1");
    assert_eq!(start(&def), t, "the same decision yields the same commands");
}

#[test]
fn stored_forms_round_trip() {
    for p in [Position::Step(0), Position::Step(2), Position::Compensation(0), Position::Finalizing, Position::Done] {
        assert_eq!(Position::decode(&p.encode()), Some(p));
    }
    for s in Status::ALL {
        assert_eq!(Status::parse(s.as_str()), Some(s));
    }
    assert_eq!(Position::decode("step:x"), None);
}

fn timed_out(def: &SagaDefinition, state: &SagaState, timing: &Timing) -> Transition {
    match on_timeout(def, state, timing) {
        Outcome::Applied(t) => t,
        Outcome::Ignored(why) => panic!("timeout ignored: {why}"),
    }
}

#[test]
fn a_compensatable_step_that_times_out_is_undone_first_and_a_late_success_is_ignored() {
    let def = order_saga();
    let timing = Timing::default();
    let s0 = start(&def).state;
    let t = timed_out(&def, &s0, &timing);
    assert_eq!(t.event, "step-timed-out");
    assert_eq!(t.state.position, Position::Compensation(0));
    assert_eq!(actions(&t), vec![Action::ReleaseStock], "the reservation may still land, so it is released");
    assert_eq!(t.commands[0].key("o"), "o:reserve_stock:undo:1");
    // The StockReserved that arrives late does not move the saga; the release settles it.
    assert!(matches!(on_reply(&def, &t.state, Reply::StockReserved, None), Outcome::Ignored(_)));
    let t2 = apply(&def, &t.state, Reply::StockReleased);
    assert_eq!(actions(&t2), vec![Action::RejectOrder]);
    assert_eq!(apply(&def, &t2.state, Reply::OrderRejected).state.status, Status::Compensated);
}

#[test]
fn a_pivot_that_times_out_is_cancelled_then_earlier_steps_are_compensated() {
    let def = order_saga();
    let timing = Timing::default();
    let s1 = apply(&def, &start(&def).state, Reply::StockReserved).state;
    let t = timed_out(&def, &s1, &timing);
    assert_eq!(actions(&t), vec![Action::VoidPayment]);
    assert!(matches!(on_reply(&def, &t.state, Reply::PaymentAuthorized, None), Outcome::Ignored(_)), "a late authorization is voided, not applied");
    let t2 = apply(&def, &t.state, Reply::PaymentVoided);
    assert_eq!(actions(&t2), vec![Action::ReleaseStock]);
}

#[test]
fn a_retriable_step_that_times_out_is_sent_again_with_backoff() {
    let def = order_saga();
    let timing = Timing { timeout_override_ms: Some(1000), max_delay_ms: 5000, max_compensation_attempts: 3 };
    let s1 = apply(&def, &start(&def).state, Reply::StockReserved).state;
    let s2 = apply(&def, &s1, Reply::PaymentAuthorized).state;
    assert_eq!(deadline_in_ms(&def, &s2, &timing), Some(1000));
    let mut state = s2;
    let mut waits = vec![];
    for attempt in 2..=5 {
        let t = timed_out(&def, &state, &timing);
        assert_eq!((t.event, t.state.status, t.commands[0].attempt), ("step-retried", Status::Running, attempt));
        assert_eq!(actions(&t), vec![Action::ApproveOrder]);
        state = t.state;
        waits.push(deadline_in_ms(&def, &state, &timing).unwrap());
    }
    assert_eq!(waits, vec![2000, 4000, 5000, 5000], "doubling, capped at max_delay_ms");
    assert_eq!(apply(&def, &state, Reply::OrderApproved).state.status, Status::Completed);
}

#[test]
fn a_compensation_unconfirmed_after_its_attempts_leaves_the_saga_stuck_never_compensated() {
    let def = order_saga();
    let timing = Timing { max_compensation_attempts: 3, ..Timing::default() };
    let s1 = apply(&def, &start(&def).state, Reply::StockReserved).state;
    let mut state = apply(&def, &s1, Reply::PaymentDeclined).state;
    for attempt in 2..=3 {
        let t = timed_out(&def, &state, &timing);
        assert_eq!((t.event, t.commands[0].attempt), ("compensation-retried", attempt));
        assert_eq!(t.commands[0].key("o"), format!("o:reserve_stock:undo:{attempt}"));
        state = t.state;
    }
    let stuck = timed_out(&def, &state, &timing);
    assert_eq!(stuck.state.status, Status::Stuck);
    assert!(stuck.commands.is_empty());
    assert!(stuck.state.blocked.as_deref().unwrap().contains("gave up after 3 attempts"), "{:?}", stuck.state.blocked);
    assert_eq!(deadline_in_ms(&def, &stuck.state, &timing), None, "a stuck saga waits for an operator");
    assert!(matches!(on_timeout(&def, &stuck.state, &timing), Outcome::Ignored(_)));
    // An operator retry is one more attempt; a confirmation then ends it properly.
    let retried = retry(&def, &stuck.state).unwrap();
    assert_eq!((retried.state.status, retried.commands[0].attempt), (Status::Compensating, 4));
    let done = apply(&def, &retried.state, Reply::StockReleased);
    assert_eq!(actions(&done), vec![Action::RejectOrder]);
    // Even a confirmation that arrives while stuck moves it on.
    assert_eq!(apply(&def, &stuck.state, Reply::StockReleased).state.status, Status::Compensating);
}

#[test]
fn a_parked_saga_waits_without_deadline_and_moves_on_when_its_reply_comes() {
    let def = order_saga();
    let s0 = start(&def).state;
    let Outcome::Applied(p) = park(&s0, "ReserveStock dead-lettered") else { panic!("not parked") };
    assert_eq!(p.state.status, Status::Parked);
    assert_eq!(deadline_in_ms(&def, &p.state, &Timing::default()), None);
    let t = apply(&def, &p.state, Reply::StockReserved);
    assert_eq!((t.state.status, t.state.blocked.clone()), (Status::Running, None));
    let done = SagaState { status: Status::Completed, position: Position::Done, attempt: 0, failure: None, blocked: None };
    assert!(matches!(park(&done, "x"), Outcome::Ignored(_)), "an ended saga is never parked");
}

#[test]
fn abort_compensates_from_where_the_saga_stands_and_refuses_past_the_pivot() {
    let def = order_saga();
    let s1 = apply(&def, &start(&def).state, Reply::StockReserved).state;
    let plan: Vec<String> = abort_plan(&def, &s1).unwrap().iter().map(|c| c.key("o")).collect();
    assert_eq!(plan, vec!["o:authorize_payment:undo:1", "o:reserve_stock:undo:1", "o:finalize:finalize:1"]);
    let t = abort(&def, &s1, "customer called").unwrap();
    assert_eq!(actions(&t), vec![Action::VoidPayment]);
    assert_eq!(t.state.failure.as_deref(), Some("aborted by an operator: customer called"));
    assert!(abort(&def, &t.state, "again").unwrap_err().contains("already compensating"));
    let past = apply(&def, &s1, Reply::PaymentAuthorized).state;
    assert!(abort(&def, &past, "late").unwrap_err().contains("past its pivot"));
    let plan0: Vec<Action> = abort_plan(&def, &start(&def).state).unwrap().iter().map(|c| c.action).collect();
    assert_eq!(plan0, vec![Action::ReleaseStock, Action::RejectOrder]);
}

/// The reply a participant gives to a command, given whether a forward action succeeds.
fn answer(action: Action, ok: bool) -> Reply {
    match action {
        Action::ReserveStock if ok => Reply::StockReserved,
        Action::ReserveStock => Reply::StockReservationFailed,
        Action::AuthorizePayment if ok => Reply::PaymentAuthorized,
        Action::AuthorizePayment => Reply::PaymentDeclined,
        Action::ReleaseStock => Reply::StockReleased,
        Action::VoidPayment => Reply::PaymentVoided,
        Action::ApproveOrder => Reply::OrderApproved,
        Action::RejectOrder => Reply::OrderRejected,
        Action::CheckRisk if ok => Reply::RiskAccepted,
        Action::CheckRisk => Reply::RiskRejected,
    }
}

/// Version 1 or 2 of the order saga.
fn version(v2: bool) -> SagaDefinition {
    if v2 {
        order_saga_v2()
    } else {
        order_saga()
    }
}

proptest::proptest! {
    /// Whatever the participants answer, and however many earlier replies are delivered again
    /// in between (late duplicates), the saga ends Completed exactly when every forward step
    /// succeeded and Compensated otherwise, releasing stock only when it was reserved.
    #[test]
    fn every_run_ends_in_the_right_terminal_state(
        v2 in proptest::bool::ANY,
        stock_ok in proptest::bool::ANY,
        risk_ok in proptest::bool::ANY,
        payment_ok in proptest::bool::ANY,
        duplicates in proptest::collection::vec(proptest::option::of(0usize..8), 0..20),
    ) {
        // (Timeouts and late replies are covered by the next property.)
        let def = version(v2);
        // Version 1 has no risk check: as if every check passed.
        let risk_ok = risk_ok || !v2;
        let t = start(&def);
        let mut state = t.state;
        let mut pending = t.commands.clone();
        let mut sent = t.commands;
        let mut delivered: Vec<Reply> = Vec::new();
        let mut duplicates = duplicates.into_iter();
        let mut rounds = 0;
        while let Some(cmd) = pending.pop() {
            rounds += 1;
            proptest::prop_assert!(rounds < 20, "saga did not terminate");
            if let Some(Some(i)) = duplicates.next() {
                if let Some(dup) = delivered.get(i % delivered.len().max(1)).copied() {
                    let before = state.clone();
                    let outcome = on_reply(&def, &state, dup, None);
                    proptest::prop_assert!(matches!(outcome, Outcome::Ignored(_)), "duplicate {:?} moved the saga", dup);
                    proptest::prop_assert_eq!(&state, &before);
                }
            }
            let ok = match cmd.action {
                Action::ReserveStock => stock_ok,
                Action::CheckRisk => risk_ok,
                Action::AuthorizePayment => payment_ok,
                _ => true,
            };
            let reply = answer(cmd.action, ok);
            delivered.push(reply);
            match on_reply(&def, &state, reply, Some("no")) {
                Outcome::Applied(t) => {
                    state = t.state;
                    pending = t.commands.clone();
                    sent.extend(t.commands);
                }
                Outcome::Ignored(why) => proptest::prop_assert!(false, "answer ignored: {}", why),
            }
        }
        proptest::prop_assert!(state.status.is_terminal());
        let count = |a: Action| sent.iter().filter(|c| c.action == a).count();
        let all_ok = stock_ok && risk_ok && payment_ok;
        proptest::prop_assert_eq!(state.status == Status::Completed, all_ok);
        proptest::prop_assert_eq!(count(Action::ApproveOrder), usize::from(all_ok));
        proptest::prop_assert_eq!(count(Action::RejectOrder), usize::from(!all_ok));
        proptest::prop_assert_eq!(count(Action::ReleaseStock), usize::from(stock_ok && !all_ok));
        proptest::prop_assert_eq!(count(Action::CheckRisk), usize::from(stock_ok && v2));
        proptest::prop_assert_eq!(count(Action::AuthorizePayment), usize::from(stock_ok && risk_ok));
    }
}

/// What a participant's state ends as, given the commands it applied in the order they arrived:
/// a forward action after its undo is refused (the RELEASED/VOIDED tombstones).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Holding {
    #[default]
    Nothing,
    Held,
    Undone,
}

fn participant_apply(held: &mut Holding, forward: bool, ok: bool) -> bool {
    match (*held, forward) {
        (Holding::Nothing, true) if ok => {
            *held = Holding::Held;
            true
        }
        (Holding::Held, true) => true,
        (_, true) => false,
        (_, false) => {
            *held = Holding::Undone;
            true
        }
    }
}

/// The three participants as the property sees them.
struct World {
    stock_ok: bool,
    risk_ok: bool,
    payment_ok: bool,
    stock: Holding,
    payment: Holding,
    approved: bool,
    rejected: bool,
}

impl World {
    /// A participant applies `action`; its reply.
    fn apply(&mut self, action: Action) -> Reply {
        match action {
            Action::ReserveStock if participant_apply(&mut self.stock, true, self.stock_ok) => Reply::StockReserved,
            Action::ReserveStock => Reply::StockReservationFailed,
            Action::ReleaseStock => {
                participant_apply(&mut self.stock, false, true);
                Reply::StockReleased
            }
            Action::AuthorizePayment if participant_apply(&mut self.payment, true, self.payment_ok) => Reply::PaymentAuthorized,
            Action::AuthorizePayment => Reply::PaymentDeclined,
            Action::VoidPayment => {
                participant_apply(&mut self.payment, false, true);
                Reply::PaymentVoided
            }
            Action::ApproveOrder => {
                self.approved |= !self.rejected;
                Reply::OrderApproved
            }
            Action::RejectOrder => {
                self.rejected |= !self.approved;
                Reply::OrderRejected
            }
            Action::CheckRisk => answer(action, self.risk_ok),
        }
    }
}

proptest::proptest! {
    /// Any interleaving of replies, lost replies (timeouts), duplicates and late deliveries ends
    /// in a terminal state (or STUCK after its attempts), and what the participants hold agrees
    /// with it: completed ⇒ stock and payment held and the order approved; compensated ⇒ neither
    /// held and the order rejected.
    #[test]
    fn timeouts_duplicates_and_late_replies_end_consistently(
        v2 in proptest::bool::ANY,
        stock_ok in proptest::bool::ANY,
        risk_ok in proptest::bool::ANY,
        payment_ok in proptest::bool::ANY,
        script in proptest::collection::vec(0u8..7, 1..60),
    ) {
        let def = version(v2);
        let risk_ok = risk_ok || !v2;
        let timing = Timing { max_compensation_attempts: 4, ..Timing::default() };
        let t = start(&def);
        let mut state = t.state;
        // Commands in flight, and replies not yet delivered (a reply may be delayed or lost).
        let mut in_flight: Vec<Command> = t.commands;
        let mut replies: Vec<Reply> = Vec::new();
        let mut delivered: Vec<Reply> = Vec::new();
        let mut world = World { stock_ok, risk_ok, payment_ok, stock: Holding::default(), payment: Holding::default(), approved: false, rejected: false };
        let mut applied: Vec<Command> = Vec::new();
        let mut script = script.into_iter().chain(std::iter::repeat(0));
        for _ in 0..400 {
            if state.status.is_terminal() || state.status == Status::Stuck {
                break;
            }
            let choice = script.next().unwrap_or(0);
            let mut input: Option<Outcome> = None;
            match choice {
                // A participant applies the oldest command in flight; its reply is queued.
                0 | 1 if !in_flight.is_empty() => {
                    let c = in_flight.remove(0);
                    applied.push(c.clone());
                    replies.push(world.apply(c.action));
                }
                // The oldest queued reply reaches the saga.
                0..=2 if !replies.is_empty() => {
                    let r = replies.remove(0);
                    delivered.push(r);
                    input = Some(on_reply(&def, &state, r, Some("no")));
                }
                // A reply is lost.
                3 if !replies.is_empty() => { replies.remove(0); }
                // A delivered reply is delivered again.
                4 if !delivered.is_empty() => {
                    let r = delivered[delivered.len() / 2];
                    input = Some(on_reply(&def, &state, r, None));
                }
                // A command applied earlier is delivered again (a producer retry, a redrive):
                // a forward action now may come after its undo.
                5 if !applied.is_empty() => {
                    let c = applied[applied.len() / 2].clone();
                    in_flight.insert(0, c);
                }
                // The deadline passes.
                _ => input = Some(on_timeout(&def, &state, &timing)),
            }
            if let Some(Outcome::Applied(t)) = input {
                state = t.state;
                in_flight.extend(t.commands);
            }
        }
        // Let everything in flight settle with no more loss, so the end state is final.
        for _ in 0..200 {
            if state.status.is_terminal() || state.status == Status::Stuck { break; }
            if let Some(c) = (!in_flight.is_empty()).then(|| in_flight.remove(0)) {
                replies.push(world.apply(c.action));
            }
            let input = if replies.is_empty() { on_timeout(&def, &state, &timing) } else { on_reply(&def, &state, replies.remove(0), Some("no")) };
            if let Outcome::Applied(t) = input {
                state = t.state;
                in_flight.extend(t.commands);
            }
        }
        proptest::prop_assert!(state.status.is_terminal() || state.status == Status::Stuck, "ended {:?}", state);
        // Commands still in flight at the end land too (late deliveries).
        for c in in_flight {
            if matches!(c.action, Action::ReserveStock | Action::AuthorizePayment) {
                world.apply(c.action);
            }
        }
        let World { stock, payment, approved, rejected, .. } = world;
        match state.status {
            Status::Completed => {
                proptest::prop_assert!(stock_ok && risk_ok && payment_ok);
                proptest::prop_assert_eq!((stock, payment, approved, rejected), (Holding::Held, Holding::Held, true, false));
            }
            Status::Compensated => {
                proptest::prop_assert!(stock != Holding::Held, "stock leaked: {:?}", stock);
                proptest::prop_assert!(payment != Holding::Held, "authorization left on a rejected order");
                proptest::prop_assert_eq!((approved, rejected), (false, true));
            }
            _ => proptest::prop_assert!(state.blocked.is_some(), "stuck without a reason"),
        }
    }
}

#[test]
fn v2_checks_risk_between_reservation_and_authorization() {
    let def = order_saga_v2();
    let t0 = start(&def);
    let t1 = apply(&def, &t0.state, Reply::StockReserved);
    assert_eq!(actions(&t1), vec![Action::CheckRisk]);
    let t2 = apply(&def, &t1.state, Reply::RiskAccepted);
    assert_eq!(actions(&t2), vec![Action::AuthorizePayment]);
    // A rejection releases the stock, then rejects the order; the check itself is not undone.
    let r = apply(&def, &t1.state, Reply::RiskRejected);
    assert_eq!((r.event, actions(&r)), ("step-failed", vec![Action::ReleaseStock]));
    assert_eq!(r.state.failure.as_deref(), Some("because"));
    let r2 = apply(&def, &r.state, Reply::StockReleased);
    assert_eq!(actions(&r2), vec![Action::RejectOrder]);
    // A check that times out fails the same way, and its late answer is ignored.
    let Outcome::Applied(late) = on_timeout(&def, &t1.state, &Timing::default()) else { panic!("the check did not time out") };
    assert_eq!((late.event, actions(&late)), ("step-timed-out", vec![Action::ReleaseStock]));
    assert_eq!(late.state.failure.as_deref(), Some("step check_risk timed out"));
    assert!(matches!(on_reply(&def, &late.state, Reply::RiskAccepted, None), Outcome::Ignored(_)));
    // Aborting at the check compensates what came before it.
    let plan: Vec<Action> = abort_plan(&def, &t1.state).unwrap().iter().map(|c| c.action).collect();
    assert_eq!(plan, vec![Action::ReleaseStock, Action::RejectOrder]);
}
