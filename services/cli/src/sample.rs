//! Sample orders for `dev`, `bench` and the tests: a deterministic mix of outcomes.

use saga_contracts::{Envelope, OrderLine, PlaceOrder};

/// The outcome a sample order is built to have (given the shipped seed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Enough stock and credit.
    Approved,
    /// Asks for more of the scarce sku than there is.
    OutOfStock,
    /// Billed to the customer with a low credit limit.
    Declined,
}

/// The `i`-th order of a run: five in seven succeed, one runs out of stock, one is declined.
pub fn sample_order(run: &str, i: usize) -> (PlaceOrder, Expect) {
    let expect = match i % 7 {
        5 => Expect::OutOfStock,
        6 => Expect::Declined,
        _ => Expect::Approved,
    };
    let (customer, lines) = match expect {
        Expect::Approved => ("alice", vec![line("WIDGET-1", 1 + (i % 3) as i32, 1250), line("GADGET-2", 1, 4999)]),
        Expect::OutOfStock => ("carol", vec![line("WIDGET-1", 1, 1250), line("RARE-GEM", 1000, 100000)]),
        Expect::Declined => ("bob", vec![line("GADGET-2", 2, 4999)]),
    };
    (place_order(&format!("{run}-{i:05}"), customer, lines), expect)
}

/// A `PlaceOrder` as a client would send it.
pub fn place_order(order_id: &str, customer: &str, lines: Vec<OrderLine>) -> PlaceOrder {
    PlaceOrder {
        envelope: Envelope {
            message_id: format!("place-{order_id}"),
            message_type: PlaceOrder::FULL_NAME.into(),
            saga_id: None,
            correlation_id: order_id.into(),
            causation_id: None,
            occurred_at_ms: saga_contracts::now_ms(),
        },
        order_id: order_id.into(),
        customer_id: customer.into(),
        currency: "EUR".into(),
        lines,
        promotion_code: None,
    }
}

/// An order line priced in EUR.
pub fn line(sku: &str, quantity: i32, unit_price_minor: i64) -> OrderLine {
    OrderLine { sku: sku.into(), quantity, unit_price_minor, currency: "EUR".into() }
}
