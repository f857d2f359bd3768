//! Order rules: validation and the order's lifecycle. Pure: no I/O.

use saga_contracts::OrderLine;

/// Most lines one order may have.
pub const MAX_LINES: usize = 1000;

/// Where an order stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderStatus {
    /// Validated; its saga is running. Nothing else may change it.
    Pending,
    /// Its saga completed.
    Approved,
    /// Refused by validation, or its saga failed and was compensated.
    Rejected,
}

impl OrderStatus {
    /// The stored form.
    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Pending => "PENDING",
            OrderStatus::Approved => "APPROVED",
            OrderStatus::Rejected => "REJECTED",
        }
    }

    /// Parses the stored form.
    pub fn parse(s: &str) -> Option<OrderStatus> {
        match s {
            "PENDING" => Some(OrderStatus::Pending),
            "APPROVED" => Some(OrderStatus::Approved),
            "REJECTED" => Some(OrderStatus::Rejected),
            _ => None,
        }
    }
}

/// Checks an order request; returns its total in minor units, or why it is refused.
/// A refusal is a business answer (an `OrderRejected` event), not an error.
pub fn validate(order_id: &str, customer_id: &str, currency: &str, lines: &[OrderLine]) -> Result<i64, String> {
    if order_id.trim().is_empty() {
        return Err("order id is empty".into());
    }
    if customer_id.trim().is_empty() {
        return Err("customer id is empty".into());
    }
    if !is_currency_code(currency) {
        return Err(format!("currency {currency:?} is not a three-letter ISO 4217 code"));
    }
    if lines.is_empty() {
        return Err("order has no lines".into());
    }
    if lines.len() > MAX_LINES {
        return Err(format!("order has {} lines, at most {MAX_LINES} are allowed", lines.len()));
    }
    let mut total: i64 = 0;
    for (i, line) in lines.iter().enumerate() {
        if line.sku.trim().is_empty() {
            return Err(format!("line {} has an empty sku", i + 1));
        }
        if line.quantity <= 0 {
            return Err(format!("line {} ({}) has quantity {}, it must be positive", i + 1, line.sku, line.quantity));
        }
        if line.unit_price_minor < 0 {
            return Err(format!("line {} ({}) has a negative unit price", i + 1, line.sku));
        }
        if line.currency != currency {
            return Err(format!("line {} ({}) is priced in {}, the order is in {currency}", i + 1, line.sku, line.currency));
        }
        total = i64::from(line.quantity)
            .checked_mul(line.unit_price_minor)
            .and_then(|l| total.checked_add(l))
            .ok_or_else(|| "order total overflows".to_string())?;
    }
    Ok(total)
}

fn is_currency_code(s: &str) -> bool {
    s.len() == 3 && s.bytes().all(|b| b.is_ascii_uppercase())
}

/// What an `ApproveOrder` or `RejectOrder` does to an order in `status`.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// Move to the new status and announce it.
    Apply(OrderStatus),
    /// Already there: announce it again (the orchestrator may be retrying), change nothing.
    Repeat(OrderStatus),
    /// The order is final in the other direction; this command contradicts it.
    Contradicts(OrderStatus),
}

/// Decides an orchestrator command against the order's current status.
pub fn decide(status: OrderStatus, target: OrderStatus) -> Decision {
    match status {
        OrderStatus::Pending => Decision::Apply(target),
        s if s == target => Decision::Repeat(target),
        s => Decision::Contradicts(s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(sku: &str, quantity: i32, price: i64, currency: &str) -> OrderLine {
        OrderLine { sku: sku.into(), quantity, unit_price_minor: price, currency: currency.into() }
    }

    #[test]
    fn accepts_a_valid_order_and_totals_it() {
        let lines = [line("A", 2, 150, "EUR"), line("B", 1, 1000, "EUR")];
        assert_eq!(validate("o1", "c1", "EUR", &lines), Ok(1300));
    }

    #[test]
    fn refuses_an_order_without_lines() {
        assert_eq!(validate("o1", "c1", "EUR", &[]), Err("order has no lines".into()));
    }

    #[test]
    fn refuses_negative_and_zero_quantities() {
        for q in [-1, 0] {
            let e = validate("o1", "c1", "EUR", &[line("A", q, 1, "EUR")]).unwrap_err();
            assert!(e.contains("must be positive"), "{e}");
        }
    }

    #[test]
    fn refuses_a_currency_mismatch() {
        let e = validate("o1", "c1", "EUR", &[line("A", 1, 1, "USD")]).unwrap_err();
        assert!(e.contains("priced in USD"), "{e}");
    }

    #[test]
    fn refuses_bad_currency_codes_ids_and_prices() {
        assert!(validate("o1", "c1", "eur", &[line("A", 1, 1, "eur")]).is_err());
        assert!(validate("", "c1", "EUR", &[line("A", 1, 1, "EUR")]).is_err());
        assert!(validate("o1", " ", "EUR", &[line("A", 1, 1, "EUR")]).is_err());
        assert!(validate("o1", "c1", "EUR", &[line("A", 1, -5, "EUR")]).is_err());
        assert!(validate("o1", "c1", "EUR", &[line("", 1, 5, "EUR")]).is_err());
    }

    #[test]
    fn refuses_overflowing_totals() {
        let e = validate("o1", "c1", "EUR", &[line("A", i32::MAX, i64::MAX / 2, "EUR")]).unwrap_err();
        assert!(e.contains("overflows"), "{e}");
    }

    #[test]
    fn orchestrator_commands_are_idempotent_and_final_states_hold() {
        use OrderStatus::*;
        assert_eq!(decide(Pending, Approved), Decision::Apply(Approved));
        assert_eq!(decide(Pending, Rejected), Decision::Apply(Rejected));
        assert_eq!(decide(Approved, Approved), Decision::Repeat(Approved));
        assert_eq!(decide(Rejected, Rejected), Decision::Repeat(Rejected));
        assert_eq!(decide(Approved, Rejected), Decision::Contradicts(Approved));
        assert_eq!(decide(Rejected, Approved), Decision::Contradicts(Rejected));
    }

    #[test]
    fn status_round_trips() {
        for s in [OrderStatus::Pending, OrderStatus::Approved, OrderStatus::Rejected] {
            assert_eq!(OrderStatus::parse(s.as_str()), Some(s));
        }
    }

    proptest::proptest! {
        #[test]
        fn total_is_the_sum_of_lines(qs in proptest::collection::vec((1i32..1000, 0i64..100_000), 1..20)) {
            let lines: Vec<_> = qs.iter().map(|(q, p)| line("S", *q, *p, "EUR")).collect();
            let expected: i64 = qs.iter().map(|(q, p)| i64::from(*q) * p).sum();
            proptest::prop_assert_eq!(validate("o", "c", "EUR", &lines), Ok(expected));
        }
    }
}
