use super::*;
use crate::chaos::faults::PoisonRecord;
use crate::chaos::schedule::PoisonKind;
use saga_cli::sample::{line, Expect};

fn placed(id: &str, qty: i32, expect: Expect) -> Placed {
    Placed { order_id: id.into(), lines: vec![line("W", qty, 100)], expect }
}

/// Two orders, one approved (3 units, 300 authorized) and one rejected, one poison record; all consistent.
fn consistent() -> (Snapshot, Vec<Placed>, BTreeMap<String, i64>, Vec<PoisonRecord>) {
    let mut s = Snapshot::default();
    let saga = |status: &str| Saga { status: status.into(), reason: None };
    s.sagas.insert("a".into(), saga("COMPLETED"));
    s.sagas.insert("b".into(), saga("COMPENSATED"));
    s.orders.insert("a".into(), "APPROVED".into());
    s.orders.insert("b".into(), "REJECTED".into());
    s.reservations.insert("a".into(), "RESERVED".into());
    s.reservations.insert("b".into(), "RELEASED".into());
    s.authorizations.insert("a".into(), ("AUTHORIZED".into(), "alice".into(), 300));
    s.authorizations.insert("b".into(), ("DECLINED".into(), "bob".into(), 200));
    s.accounts.insert("alice".into(), 300);
    s.accounts.insert("bob".into(), 0);
    s.stock.insert("W".into(), (7, 3));
    s.outbox.insert("order", 0);
    s.offsets.insert(("saga-order".into(), "t.order.commands".into(), 0), (5, 5));
    s.dead_letters.push(DeadLetter {
        dlt: "t.order.commands.dlt".into(),
        key: "p1".into(),
        original_topic: Some("t.order.commands".into()),
        class: Some("not-wire-format".into()),
    });
    let placed = vec![placed("a", 3, Expect::Approved), placed("b", 2, Expect::Declined)];
    let poison = vec![PoisonRecord { topic: "t.order.commands".into(), key: "p1".into(), kind: PoisonKind::Garbage }];
    (s, placed, BTreeMap::from([("W".to_string(), 10)]), poison)
}

#[test]
fn a_consistent_snapshot_passes() {
    let (s, p, stock, poison) = consistent();
    let v = check(&s, &p, &stock, &poison);
    assert_eq!(v.violations, Vec::<String>::new());
    assert_eq!((v.completed, v.compensated, v.stuck, v.parked), (1, 1, 0, 0));
}

/// A named change that breaks one invariant of a consistent snapshot.
type Breakage = (&'static str, Box<dyn Fn(&mut Snapshot)>);

#[test]
fn each_inconsistency_is_a_violation() {
    let cases: Vec<Breakage> = vec![
        ("not terminal", Box::new(|s| s.sagas.get_mut("a").unwrap().status = "RUNNING".into())),
        (
            "completed saga disagrees",
            Box::new(|s| {
                s.reservations.insert("a".into(), "RELEASED".into());
            }),
        ),
        (
            "compensated saga disagrees",
            Box::new(|s| {
                s.authorizations.insert("b".into(), ("AUTHORIZED".into(), "bob".into(), 0));
            }),
        ),
        (
            "not conserved",
            Box::new(|s| {
                s.stock.insert("W".into(), (8, 3));
            }),
        ),
        (
            "approved orders hold",
            Box::new(|s| {
                s.stock.insert("W".into(), (6, 4));
            }),
        ),
        (
            "authorized on the account",
            Box::new(|s| {
                s.accounts.insert("alice".into(), 600);
            }),
        ),
        (
            "outbox",
            Box::new(|s| {
                s.outbox.insert("order", 1);
            }),
        ),
        (
            "lag 2",
            Box::new(|s| {
                s.offsets.insert(("saga-order".into(), "t.order.commands".into(), 0), (3, 5));
            }),
        ),
        (
            "no injected poison",
            Box::new(|s| {
                let mut d = s.dead_letters[0].clone();
                d.key = "real".into();
                s.dead_letters.push(d);
            }),
        ),
        ("is not in", Box::new(|s| s.dead_letters.clear())),
        (
            "no saga",
            Box::new(|s| {
                s.sagas.remove("b");
            }),
        ),
        ("without a recorded reason", Box::new(|s| s.sagas.get_mut("b").unwrap().status = "PARKED".into())),
    ];
    for (want, break_it) in cases {
        let (mut s, p, stock, poison) = consistent();
        break_it(&mut s);
        let v = check(&s, &p, &stock, &poison);
        assert!(v.violations.iter().any(|x| x.contains(want)), "{want}: {:?}", v.violations);
    }
}

#[test]
fn stuck_and_parked_with_a_reason_are_counted_not_violations() {
    let (mut s, p, stock, poison) = consistent();
    s.sagas.insert("b".into(), Saga { status: "STUCK".into(), reason: Some("step deadline passed".into()) });
    let v = check(&s, &p, &stock, &poison);
    assert_eq!(v.violations, Vec::<String>::new());
    assert_eq!(v.stuck, 1);
}
