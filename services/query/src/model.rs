//! The read model of one order, folded from the facts the event stream tells about it. Pure: no I/O.
//!
//! Every field is a join over the facts seen, so the fold is commutative and idempotent: the same
//! set of facts gives the same view whatever order they arrive in (a `PaymentAuthorized` may be
//! read before the `OrderCreated` of its order: they travel on different topics) and however often
//! one is re-delivered. Where two facts could disagree, a fixed precedence decides:
//! - details (customer, lines, total): `OrderCreated` over `PlaceOrder`; between two
//!   `PlaceOrder`s of one order, the one first in its partition (the one the order service took);
//! - status: REJECTED over APPROVED over PENDING;
//! - stock: released over reserved over failed over pending;
//! - payment: voided over authorized over declined over pending.
//!
//! A compensation can only follow what it undoes, and a final status only a saga's end, so each
//! precedence is also the order in which the write side can move.

use saga_contracts::{Message, OrderLine};
use serde::{Deserialize, Serialize};

/// What one message tells the read model about its order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "fact", rename_all = "snake_case")]
pub enum Fact {
    /// A client asked for the order (`PlaceOrder`); not yet validated.
    Placed {
        /// The customer.
        customer_id: String,
        /// ISO 4217 code.
        currency: String,
        /// What is ordered.
        lines: Vec<OrderLine>,
    },
    /// The order passed validation (`OrderCreated`).
    Created {
        /// The customer.
        customer_id: String,
        /// ISO 4217 code.
        currency: String,
        /// Sum of the lines, minor units.
        total_minor: i64,
        /// What is ordered.
        lines: Vec<OrderLine>,
    },
    /// `OrderApproved`.
    Approved,
    /// `OrderRejected`.
    Rejected {
        /// Why.
        reason: String,
    },
    /// `StockReserved`.
    StockReserved,
    /// `StockReservationFailed`.
    StockFailed {
        /// Why.
        reason: String,
    },
    /// `StockReleased`.
    StockReleased {
        /// False when there was no reservation to release.
        released: bool,
    },
    /// `PaymentAuthorized`.
    PaymentAuthorized {
        /// The authorization's id.
        authorization_id: String,
        /// Minor units.
        amount_minor: i64,
    },
    /// `PaymentDeclined`.
    PaymentDeclined {
        /// Why.
        reason: String,
    },
    /// `PaymentVoided`.
    PaymentVoided {
        /// False when there was no authorization to void.
        voided: bool,
    },
}

impl Fact {
    /// What `message` tells about its order; `None` for a message the read model does not follow
    /// (the orchestrator's commands, the risk check's verdicts).
    pub fn of(message: &Message) -> Option<Fact> {
        Some(match message {
            Message::PlaceOrder(m) => Fact::Placed { customer_id: m.customer_id.clone(), currency: m.currency.clone(), lines: m.lines.clone() },
            Message::OrderCreated(m) => {
                Fact::Created { customer_id: m.customer_id.clone(), currency: m.currency.clone(), total_minor: m.total_minor, lines: m.lines.clone() }
            }
            Message::OrderApproved(_) => Fact::Approved,
            Message::OrderRejected(m) => Fact::Rejected { reason: m.reason.clone() },
            Message::StockReserved(_) => Fact::StockReserved,
            Message::StockReservationFailed(m) => Fact::StockFailed { reason: m.reason.clone() },
            Message::StockReleased(m) => Fact::StockReleased { released: m.released },
            Message::PaymentAuthorized(m) => Fact::PaymentAuthorized { authorization_id: m.authorization_id.clone(), amount_minor: m.amount_minor },
            Message::PaymentDeclined(m) => Fact::PaymentDeclined { reason: m.reason.clone() },
            Message::PaymentVoided(m) => Fact::PaymentVoided { voided: m.voided },
            Message::ApproveOrder(_)
            | Message::RejectOrder(_)
            | Message::ReserveStock(_)
            | Message::ReleaseStock(_)
            | Message::AuthorizePayment(_)
            | Message::VoidPayment(_)
            | Message::CheckRisk(_) => return None,
            // The risk check's verdict reaches the view through the saga's outcome: a rejection
            // is the reason of the order's OrderRejected.
            Message::RiskAccepted(_) | Message::RiskRejected(_) => return None,
        })
    }

    /// The reason it carries, when it carries one (shown in the history as the cause).
    pub fn reason(&self) -> Option<&str> {
        match self {
            Fact::Rejected { reason } | Fact::StockFailed { reason } | Fact::PaymentDeclined { reason } => Some(reason),
            _ => None,
        }
    }
}

macro_rules! ranked_enum {
    ($(#[$doc:meta])* $name:ident as $case:literal { $($(#[$vdoc:meta])* $variant:ident = $text:literal),* $(,)? }) => {
        $(#[$doc])*
        /// Variants are declared in precedence order: a later one outranks an earlier one.
        // The wire form is spelled by `rename_all` (serde) and by `as_str`; a test keeps the two
        // equal. The OpenAPI document takes it from `as_str` (see `api::WireEnums`).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize, utoipa::ToSchema)]
        #[serde(rename_all = $case)]
        pub enum $name {
            $($(#[$vdoc])* $variant,)*
        }

        impl $name {
            /// Every value, lowest precedence first.
            pub const ALL: &'static [$name] = &[$($name::$variant,)*];

            /// The stored and wire form.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text,)* }
            }

            /// Parses the stored and wire form.
            pub fn parse(s: &str) -> Option<$name> {
                match s { $($text => Some($name::$variant),)* _ => None }
            }
        }
    };
}

ranked_enum! {
    /// Where an order stands.
    Status as "UPPERCASE" {
        /// Placed or validated; its saga runs.
        #[default]
        Pending = "PENDING",
        /// Its saga completed.
        Approved = "APPROVED",
        /// Refused by validation, or its saga failed and was compensated.
        Rejected = "REJECTED",
    }
}

ranked_enum! {
    /// The order's stock reservation.
    StockState as "lowercase" {
        /// Nothing heard from inventory yet.
        #[default]
        Pending = "pending",
        /// Inventory could not reserve every line; nothing is held.
        Failed = "failed",
        /// Every line is reserved.
        Reserved = "reserved",
        /// The reservation was released (compensation).
        Released = "released",
    }
}

ranked_enum! {
    /// The order's payment authorization.
    PaymentState as "lowercase" {
        /// Nothing heard from payment yet.
        #[default]
        Pending = "pending",
        /// The authorization was refused.
        Declined = "declined",
        /// The total is authorized.
        Authorized = "authorized",
        /// The authorization was voided (compensation).
        Voided = "voided",
    }
}

/// Where a record was read: the view reflects every record up to these.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Position {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Offset of the newest record of this order applied from that partition.
    pub offset: i64,
}

/// One fact as it arrived: where it was read and when it happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The fact.
    pub fact: Fact,
    /// When its message was created (`envelope.occurred_at_ms`).
    pub occurred_at_ms: i64,
    /// The saga it belongs to, when the message names one.
    pub saga_id: Option<String>,
    /// Where it was read.
    pub position: Position,
}

/// The order as the read model knows it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct OrderView {
    /// The order id.
    pub order_id: String,
    /// The customer; empty until a `PlaceOrder` or `OrderCreated` is seen.
    pub customer_id: String,
    /// ISO 4217 code of the amounts.
    pub currency: String,
    /// What is ordered.
    pub lines: Vec<OrderLine>,
    /// Total in minor units, from `OrderCreated` (before it: the sum of the placed lines).
    pub total_minor: i64,
    /// Where the `OrderCreated` whose details the view holds was read (the first, should there
    /// be two); `None` until the order passed validation.
    pub validated_at: Option<Position>,
    /// Status.
    pub status: Status,
    /// Why it was rejected.
    pub rejection_reason: Option<String>,
    /// Stock.
    pub stock: StockState,
    /// Why inventory could not reserve.
    pub stock_reason: Option<String>,
    /// Payment.
    pub payment: PaymentState,
    /// Why payment declined.
    pub payment_reason: Option<String>,
    /// The authorization's id, once authorized.
    pub authorization_id: Option<String>,
    /// The saga's id.
    pub saga_id: Option<String>,
    /// Time of its earliest fact.
    pub created_at_ms: i64,
    /// Time of its latest fact.
    pub updated_at_ms: i64,
    /// The newest record applied per topic partition, sorted.
    pub positions: Vec<Position>,
    /// Where the `PlaceOrder` whose details the view holds was read (the first of its partition).
    pub placed_at: Option<Position>,
}

impl OrderView {
    /// An order nothing is known of yet.
    pub fn new(order_id: &str) -> OrderView {
        OrderView { order_id: order_id.to_string(), ..OrderView::default() }
    }

    /// Whether `OrderCreated` was seen: the order passed validation.
    pub fn validated(&self) -> bool {
        self.validated_at.is_some()
    }

    /// The view after every fact of `facts`, in any order.
    pub fn fold<'a>(order_id: &str, facts: impl IntoIterator<Item = &'a Applied>) -> OrderView {
        let mut view = OrderView::new(order_id);
        for f in facts {
            view.apply(f);
        }
        view
    }

    /// Joins one more fact into the view. Commutative and idempotent (see the module docs).
    pub fn apply(&mut self, applied: &Applied) {
        let first = self.positions.is_empty();
        self.created_at_ms = if first { applied.occurred_at_ms } else { self.created_at_ms.min(applied.occurred_at_ms) };
        self.updated_at_ms = if first { applied.occurred_at_ms } else { self.updated_at_ms.max(applied.occurred_at_ms) };
        if let Some(saga) = &applied.saga_id {
            // Every message of an order names the same saga; the least keeps the join exact.
            if self.saga_id.as_ref().is_none_or(|s| saga < s) {
                self.saga_id = Some(saga.clone());
            }
        }
        self.advance_position(&applied.position);
        match &applied.fact {
            Fact::Placed { customer_id, currency, lines } => {
                let earlier = self.placed_at.as_ref().is_none_or(|p| applied.position < *p);
                if earlier {
                    self.placed_at = Some(applied.position.clone());
                    if self.validated_at.is_none() {
                        self.customer_id = customer_id.clone();
                        self.currency = currency.clone();
                        self.lines = lines.clone();
                        self.total_minor = placed_total(lines);
                    }
                }
            }
            Fact::Created { customer_id, currency, total_minor, lines } => {
                if self.validated_at.as_ref().is_some_and(|p| *p < applied.position) {
                    return;
                }
                self.validated_at = Some(applied.position.clone());
                self.customer_id = customer_id.clone();
                self.currency = currency.clone();
                self.lines = lines.clone();
                self.total_minor = *total_minor;
            }
            Fact::Approved => self.status = self.status.max(Status::Approved),
            Fact::Rejected { reason } => {
                self.status = Status::Rejected;
                self.rejection_reason = least(self.rejection_reason.take(), reason);
            }
            Fact::StockReserved => self.stock = self.stock.max(StockState::Reserved),
            Fact::StockFailed { reason } => {
                self.stock = self.stock.max(StockState::Failed);
                self.stock_reason = least(self.stock_reason.take(), reason);
            }
            Fact::StockReleased { released } => {
                if *released {
                    self.stock = StockState::Released;
                }
            }
            Fact::PaymentAuthorized { authorization_id, .. } => {
                self.payment = self.payment.max(PaymentState::Authorized);
                self.authorization_id = least(self.authorization_id.take(), authorization_id);
            }
            Fact::PaymentDeclined { reason } => {
                self.payment = self.payment.max(PaymentState::Declined);
                self.payment_reason = least(self.payment_reason.take(), reason);
            }
            Fact::PaymentVoided { voided } => {
                if *voided {
                    self.payment = PaymentState::Voided;
                }
            }
        }
    }

    fn advance_position(&mut self, p: &Position) {
        match self.positions.iter_mut().find(|q| q.topic == p.topic && q.partition == p.partition) {
            Some(q) => q.offset = q.offset.max(p.offset),
            None => {
                self.positions.push(p.clone());
                self.positions.sort();
            }
        }
    }
}

/// The sum of the placed lines (saturating: validation refuses an overflowing order later).
fn placed_total(lines: &[OrderLine]) -> i64 {
    lines.iter().fold(0i64, |t, l| t.saturating_add(i64::from(l.quantity).saturating_mul(l.unit_price_minor)))
}

/// The lesser of two texts, so that the join of two disagreeing facts does not depend on order.
fn least(current: Option<String>, new: &str) -> Option<String> {
    match current {
        Some(c) if c.as_str() <= new => Some(c),
        _ => Some(new.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn at(topic: &str, offset: i64, time: i64, fact: Fact) -> Applied {
        Applied { fact, occurred_at_ms: time, saga_id: Some("o1".into()), position: Position { topic: topic.into(), partition: 2, offset } }
    }

    fn line() -> OrderLine {
        OrderLine { sku: "A".into(), quantity: 2, unit_price_minor: 150, currency: "EUR".into() }
    }

    /// The facts of a compensated saga: reserved, declined, released, rejected.
    fn compensated() -> Vec<Applied> {
        vec![
            at("c", 7, 100, Fact::Placed { customer_id: "alice".into(), currency: "EUR".into(), lines: vec![line()] }),
            at("o", 3, 101, Fact::Created { customer_id: "alice".into(), currency: "EUR".into(), total_minor: 300, lines: vec![line()] }),
            at("i", 5, 102, Fact::StockReserved),
            at("p", 9, 103, Fact::PaymentDeclined { reason: "insufficient credit".into() }),
            at("i", 6, 104, Fact::StockReleased { released: true }),
            at("o", 4, 105, Fact::Rejected { reason: "payment declined".into() }),
        ]
    }

    #[test]
    fn a_compensated_saga_reads_as_rejected_released_declined() {
        let v = OrderView::fold("o1", &compensated());
        assert_eq!((v.status, v.stock, v.payment), (Status::Rejected, StockState::Released, PaymentState::Declined));
        assert_eq!(v.rejection_reason.as_deref(), Some("payment declined"));
        assert_eq!(v.payment_reason.as_deref(), Some("insufficient credit"));
        assert_eq!((v.customer_id.as_str(), v.total_minor, v.validated()), ("alice", 300, true));
        assert_eq!((v.created_at_ms, v.updated_at_ms), (100, 105));
        let offsets: Vec<_> = v.positions.iter().map(|p| (p.topic.as_str(), p.offset)).collect();
        assert_eq!(offsets, [("c", 7), ("i", 6), ("o", 4), ("p", 9)]);
    }

    #[test]
    fn a_placed_order_is_pending_with_its_lines_before_validation() {
        let v = OrderView::fold("o1", &compensated()[..1]);
        assert_eq!((v.status, v.validated(), v.total_minor, v.stock), (Status::Pending, false, 300, StockState::Pending));
    }

    #[test]
    fn a_release_of_nothing_does_not_undo_a_failure() {
        let facts = [at("i", 1, 1, Fact::StockFailed { reason: "out of stock".into() }), at("i", 2, 2, Fact::StockReleased { released: false })];
        assert_eq!(OrderView::fold("o1", &facts).stock, StockState::Failed);
    }

    #[test]
    fn the_first_place_order_of_the_partition_gives_the_details() {
        let later = at("c", 9, 1, Fact::Placed { customer_id: "bob".into(), currency: "EUR".into(), lines: vec![] });
        let first = at("c", 8, 2, Fact::Placed { customer_id: "alice".into(), currency: "EUR".into(), lines: vec![] });
        assert_eq!(OrderView::fold("o1", [&later, &first]).customer_id, "alice");
        assert_eq!(OrderView::fold("o1", [&first, &later]).customer_id, "alice");
    }

    #[test]
    fn wire_forms_round_trip() {
        fn same<T: Serialize>(v: &T, text: &str) {
            assert_eq!(serde_json::to_value(v).unwrap(), text, "serde's spelling is as_str's");
        }
        for s in Status::ALL {
            assert_eq!(Status::parse(s.as_str()), Some(*s));
            same(s, s.as_str());
        }
        for s in StockState::ALL {
            assert_eq!(StockState::parse(s.as_str()), Some(*s));
            same(s, s.as_str());
        }
        for s in PaymentState::ALL {
            assert_eq!(PaymentState::parse(s.as_str()), Some(*s));
            same(s, s.as_str());
        }
        assert_eq!(Status::parse("pending"), None);
    }

    fn any_fact() -> impl Strategy<Value = Fact> {
        let text = prop::sample::select(vec!["a", "b", "c"]).prop_map(str::to_string);
        prop_oneof![
            (text.clone(), 0i64..5).prop_map(|(c, n)| Fact::Placed {
                customer_id: c,
                currency: "EUR".into(),
                lines: vec![OrderLine { quantity: n as i32, ..line() }]
            }),
            (text.clone(), 0i64..1000).prop_map(|(c, t)| Fact::Created { customer_id: c, currency: "EUR".into(), total_minor: t, lines: vec![] }),
            Just(Fact::Approved),
            text.clone().prop_map(|reason| Fact::Rejected { reason }),
            Just(Fact::StockReserved),
            text.clone().prop_map(|reason| Fact::StockFailed { reason }),
            any::<bool>().prop_map(|released| Fact::StockReleased { released }),
            text.clone().prop_map(|id| Fact::PaymentAuthorized { authorization_id: id, amount_minor: 1 }),
            text.clone().prop_map(|reason| Fact::PaymentDeclined { reason }),
            any::<bool>().prop_map(|voided| Fact::PaymentVoided { voided }),
        ]
    }

    /// Facts of one order, each read at a distinct place, as records are.
    fn any_history() -> impl Strategy<Value = Vec<Applied>> {
        prop::collection::vec((any_fact(), 0i64..50, prop::sample::select(vec!["c", "o", "i", "p"])), 1..12)
            .prop_map(|facts| facts.into_iter().enumerate().map(|(i, (fact, time, topic))| at(topic, i as i64, time, fact)).collect())
    }

    proptest! {
        /// Any arrival order across topics, and any re-delivery, gives the same view.
        #[test]
        fn arrival_order_and_duplicates_do_not_change_the_view(
            history in any_history(),
            shuffle in any::<prop::sample::Index>(),
            repeats in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
        ) {
            let expected = OrderView::fold("o1", &history);
            let mut arrived = history.clone();
            // A permutation picked by the index (Heap-style rotation of every suffix), then duplicates.
            let mut seed = shuffle.index(usize::MAX);
            for i in (1..arrived.len()).rev() {
                arrived.swap(i, seed % (i + 1));
                seed = seed / (i + 1) + 7;
            }
            for r in &repeats {
                arrived.push(history[r.index(history.len())].clone());
            }
            prop_assert_eq!(OrderView::fold("o1", &arrived), expected);
        }
    }
}
