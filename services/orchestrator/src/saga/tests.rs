use super::*;
use crate::definition::order_saga;

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
    let done = SagaState { status: Status::Completed, position: Position::Done, attempt: 0, failure: None };
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
    for s in [Status::Running, Status::Compensating, Status::Completed, Status::Compensated] {
        assert_eq!(Status::parse(s.as_str()), Some(s));
    }
    assert_eq!(Position::decode("step:x"), None);
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
    }
}

proptest::proptest! {
    /// Whatever the participants answer, and however many earlier replies are delivered again
    /// in between (late duplicates), the saga ends Completed exactly when every forward step
    /// succeeded and Compensated otherwise, releasing stock only when it was reserved.
    #[test]
    fn every_run_ends_in_the_right_terminal_state(
        stock_ok in proptest::bool::ANY,
        payment_ok in proptest::bool::ANY,
        duplicates in proptest::collection::vec(proptest::option::of(0usize..8), 0..20),
    ) {
        let def = order_saga();
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
        proptest::prop_assert_eq!(state.status == Status::Completed, stock_ok && payment_ok);
        proptest::prop_assert_eq!(count(Action::ApproveOrder), usize::from(stock_ok && payment_ok));
        proptest::prop_assert_eq!(count(Action::RejectOrder), usize::from(!(stock_ok && payment_ok)));
        proptest::prop_assert_eq!(count(Action::ReleaseStock), usize::from(stock_ok && !payment_ok));
        proptest::prop_assert_eq!(count(Action::AuthorizePayment), usize::from(stock_ok));
    }
}
